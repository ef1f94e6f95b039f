"""Data sampling for next-token prediction: sliding windows of (input, target) ids (chapter 2).

A language model learns to predict token t+1 from tokens 0..t. From one long stream of token
ids we cut windows of ``max_length`` inputs; the targets are the same window shifted one token
to the right. ``stride`` is how far the window moves between examples: ``stride == max_length``
gives non-overlapping windows, a smaller stride gives overlapping ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from llmcourse.errors import DataError
from llmcourse.tokenizers import Tokenizer

Batch = Sequence[torch.Tensor]  # (inputs, targets), each (B, T) int64


class SlidingWindowDataset(Dataset):
    """(input, target) pairs of ``max_length`` token ids, each window ``stride`` ids after the last.

    Item i is ``(ids[s : s + max_length], ids[s + 1 : s + max_length + 1])`` with s = i * stride,
    both of shape (max_length,) and dtype int64.

    ``token_ids`` may be a NumPy array of any integer type, such as a ``uint16`` memory map of a
    tokenized corpus (``llmcourse.token_cache``): it is then read window by window, never copied
    whole. ``bytes_per_token`` is how many UTF-8 bytes of text a token stands for on average in
    this data; evaluation uses it to turn a loss into bits per byte.
    """

    def __init__(
        self,
        token_ids: Sequence[int] | torch.Tensor | np.ndarray,
        max_length: int,
        stride: int,
        *,
        bytes_per_token: float | None = None,
    ):
        ids = token_ids if isinstance(token_ids, np.ndarray) else torch.as_tensor(
            token_ids, dtype=torch.long
        )
        if ids.ndim != 1:
            raise ValueError(f"token_ids must be one flat sequence, got shape {tuple(ids.shape)}")
        if max_length < 1 or stride < 1:
            raise ValueError(f"max_length and stride must be >= 1, got {max_length} and {stride}")
        if len(ids) < max_length + 1:
            raise DataError(
                f"{len(ids)} token ids cannot fill one window: an input of max_length={max_length} "
                f"plus its shifted target needs at least {max_length + 1}; use a longer text or a "
                "smaller max_length"
            )
        if bytes_per_token is not None and not bytes_per_token > 0:
            raise ValueError(f"bytes_per_token must be > 0 or None, got {bytes_per_token}")
        self.token_ids = ids
        self.max_length = max_length
        self.stride = stride
        self.bytes_per_token = bytes_per_token
        self.starts = range(0, len(ids) - max_length, stride)

    @classmethod
    def from_text(
        cls, text: str, tokenizer: Tokenizer, max_length: int, stride: int
    ) -> SlidingWindowDataset:
        """Tokenize ``text`` (``<|endoftext|>`` is allowed as a separator) and window it."""
        ids = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
        bytes_per_token = len(text.encode("utf-8")) / len(ids) if ids else None
        return cls(ids, max_length, stride, bytes_per_token=bytes_per_token)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.starts[index]
        window = self.token_ids[start : start + self.max_length + 1]
        if isinstance(window, np.ndarray):
            window = torch.from_numpy(window.astype(np.int64))
        return window[:-1], window[1:]  # input, target: (max_length,) each


def create_dataloader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int = 0,
) -> DataLoader:
    """Batch a dataset; with the same ``seed`` the shuffled order is the same on every run.

    Batches are (inputs, targets), each (batch_size, max_length). ``drop_last`` drops a final
    short batch, which would otherwise give a noisier loss at the end of every epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if drop_last and len(dataset) < batch_size:
        raise DataError(
            f"the dataset has {len(dataset)} examples, fewer than one batch of {batch_size}, and "
            "drop_last=True would leave no batch at all; lower batch_size or the stride"
        )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator,
    )


def split_text(text: str, train_fraction: float = 0.9) -> tuple[str, str]:
    """Split a text by characters into a training part and a validation part (in that order)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be between 0 and 1, got {train_fraction}")
    cut = int(train_fraction * len(text))
    return text[:cut], text[cut:]
