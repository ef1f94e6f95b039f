"""Token and absolute positional embeddings: the input layer of a GPT (chapter 3)."""

from __future__ import annotations

import torch
from torch import nn


def embed_tokens_and_positions(
    token_table: nn.Embedding, position_table: nn.Embedding, idx: torch.Tensor, start: int = 0
) -> torch.Tensor:
    """Look up token ids ``idx`` (B, T) and add the embedding of positions start..start+T-1.

    Returns (B, T, C). The position embedding (T, C) broadcasts over the batch: every sequence
    gets the same vector for its first position, its second, and so on.
    """
    positions = torch.arange(start, start + idx.size(-1), device=idx.device)  # (T,)
    return token_table(idx) + position_table(positions)  # (B, T, C) + (T, C)


class TokenAndPositionEmbedding(nn.Module):
    """Trainable token and absolute-position lookup tables, summed (as in GPT-2).

    >>> layer = TokenAndPositionEmbedding(vocab_size=50257, context_length=4, dim=256)
    >>> layer(torch.zeros(8, 4, dtype=torch.long)).shape
    torch.Size([8, 4, 256])
    """

    def __init__(self, vocab_size: int, context_length: int, dim: int):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, dim)  # one row per token id
        self.wpe = nn.Embedding(context_length, dim)  # one row per position

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Embed token ids (B, T) with T <= context_length into vectors (B, T, dim)."""
        if idx.size(-1) > self.wpe.num_embeddings:
            raise ValueError(
                f"sequence of {idx.size(-1)} tokens exceeds the {self.wpe.num_embeddings} "
                "positions this layer has embeddings for"
            )
        return embed_tokens_and_positions(self.wte, self.wpe, idx)
