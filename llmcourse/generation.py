"""Text generation: logit processing (temperature, top-k, top-p), sampling, and a KV cache.

A GPT predicts one token at a time: run the model, turn the last position's logits (B, V) into
a next token, append it, repeat. Without a cache every step re-reads the whole context. The
KV cache keeps each layer's keys and values of the tokens already read, so a step only runs the
one new token through the network; the result is the same, token for token.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.errors import InputError
from llmcourse.model import GPTConfig
from llmcourse.model_state import eval_mode, model_device


def _check_top_k(k: int) -> None:
    if not _is_whole_number(k) or k < 1:
        raise InputError(f"top_k must be a whole number of tokens, at least 1; got {k!r}")


def _check_top_p(p: float) -> None:
    if not _is_number(p) or not 0 < p <= 1:  # NaN fails the comparison too
        raise InputError(
            f"top_p must be a probability in (0, 1], got {p!r}; 1 keeps every token"
        )


def _is_whole_number(value: object) -> bool:
    """An integer (a Python, NumPy or one-element tensor integer), not a bool."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _is_number(value: object) -> bool:
    """A real number: an int or a float, not a bool (a tensor of one number counts too)."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.dtype.is_complex
    return isinstance(value, int | float) and not isinstance(value, bool)


class KVCache:
    """Keys and values of every layer for the tokens read so far, preallocated.

    ``keys`` and ``values`` have shape (n_layer, B, H, max_length, D). ``length`` is the number
    of positions every layer holds; attention reads it as the position of its first new token.
    ``update`` is called by each layer in turn during a forward pass and writes the new keys
    and values after the first ``length`` positions. The last layer's call advances ``length``,
    so after ``model(ids, kv_cache=cache)`` it has grown by ``ids.size(1)``.
    """

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        max_length: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        max_length = config.context_length if max_length is None else max_length
        if not 1 <= max_length <= config.context_length:
            raise InputError(
                f"KVCache max_length must be between 1 and the model's context length "
                f"{config.context_length}, got {max_length}: the model has no position "
                "embedding beyond its context"
            )
        if batch_size < 1:
            raise InputError(f"KVCache batch_size must be at least 1, got {batch_size}")
        shape = (config.n_layer, batch_size, config.n_head, max_length, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_length = max_length
        self.length = 0

    def reset(self) -> None:
        """Forget every cached position (the tensors are overwritten by later updates)."""
        self.length = 0

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer ``layer``'s keys and values (B, H, T_new, D) after the cached positions;
        return all of that layer's keys and values, each (B, H, length + T_new, D)."""
        n_layer, batch_size, n_head, _, head_dim = self.keys.shape
        expected = (batch_size, n_head, keys.size(2), head_dim)
        if keys.shape != expected or values.shape != expected:
            raise InputError(
                f"keys and values must have shape (B, H, T, D) = {expected} for this cache, "
                f"got {tuple(keys.shape)} and {tuple(values.shape)}"
            )
        if keys.dtype != self.keys.dtype:
            raise InputError(
                f"the cache holds {self.keys.dtype} but the model computes {keys.dtype}; "
                "create the KVCache with the model's dtype"
            )
        end = self.length + keys.size(2)
        if end > self.max_length:
            raise InputError(
                f"the KV cache holds at most {self.max_length} positions; {self.length} are "
                f"cached and {keys.size(2)} more were given. Call reset() and re-read the "
                "last tokens instead"
            )
        self.keys[layer, :, :, self.length : end] = keys
        self.values[layer, :, :, self.length : end] = values
        if layer == n_layer - 1:
            self.length = end
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits (..., V) by ``temperature`` > 0: below 1 sharpens the distribution, above 1
    flattens it. Temperature 0 (greedy decoding) is handled by ``Sampling``."""
    if not _is_number(temperature) or not (math.isfinite(temperature) and temperature > 0):
        raise InputError(
            f"temperature must be positive (and finite) to scale logits, got {temperature!r}; "
            "for greedy decoding use Sampling(temperature=0)"
        )
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (..., V), set the others to -inf.

    Logits equal to the k-th largest are all kept, so a tie may keep more than k. A ``k``
    larger than V keeps everything."""
    _check_top_k(k)
    kth_largest = logits.topk(min(k, logits.size(-1)), dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most probable tokens whose probabilities add
    up to at least ``p`` in (0, 1], set the other logits (..., V) to -inf.

    The most probable token is always kept, and so is every token as probable as the last one
    kept. Sums are compared with a tolerance of 1e-6 so that rounding does not add a token."""
    _check_top_p(p)
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs = probs.sort(dim=-1, descending=True).values
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # of the more probable tokens
    n_kept = (mass_before < p - 1e-6).sum(dim=-1, keepdim=True).clamp(min=1)  # (..., 1)
    smallest_kept = sorted_probs.gather(-1, n_kept - 1)
    return logits.masked_fill(probs < smallest_kept, float("-inf"))


@dataclass(frozen=True)
class Sampling:
    """How a generator chooses each next token, checked when it is made.

    - ``temperature``: 0 is greedy decoding (the most likely token, no randomness); above 0 the
      logits are divided by it and a token is drawn (below 1 sharper, above 1 flatter).
    - ``top_k``: draw only from the ``top_k`` most likely tokens (None: no limit).
    - ``top_p``: draw only from the smallest set of most likely tokens whose probabilities add
      up to ``top_p`` (nucleus sampling; None: no limit). Top-k applies first.
    - ``eos_id``: the end-of-text token: a sequence that produces it stops (None: never stop).
    - ``generator``: the random generator draws come from (None: torch's global one); a seeded
      one makes sampling reproducible.
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    eos_id: int | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not _is_number(self.temperature) or not (
            math.isfinite(self.temperature) and self.temperature >= 0
        ):
            raise InputError(
                f"temperature must be 0 (greedy) or positive (and finite), got "
                f"{self.temperature!r}"
            )
        if self.top_k is not None:
            _check_top_k(self.top_k)
        if self.top_p is not None:
            _check_top_p(self.top_p)
        if self.eos_id is not None and (not _is_whole_number(self.eos_id) or self.eos_id < 0):
            raise InputError(
                f"eos_id must be a token id (a whole number, 0 or more) or None, got "
                f"{self.eos_id!r}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution (..., V), float32, that a token is drawn from for logits (..., V):
        all the probability on the argmax when greedy; otherwise the softmax of the logits
        divided by the temperature and filtered by top-k, then top-p."""
        logits = logits.float()
        if self.greedy:
            return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()
        logits = apply_temperature(logits, self.temperature)
        if self.top_k is not None:
            logits = top_k_filter(logits, self.top_k)
        if self.top_p is not None:
            logits = top_p_filter(logits, self.top_p)
        return torch.softmax(logits, dim=-1)


GREEDY = Sampling()


def sample_next_token(logits: torch.Tensor, sampling: Sampling = GREEDY) -> torch.Tensor:
    """Choose one token id per row of ``logits`` (B, V) as ``sampling`` says; returns (B,).

    Greedy decoding takes the argmax; otherwise a token is drawn from
    ``sampling.probabilities(logits)`` with ``sampling.generator``."""
    if logits.dim() != 2:
        raise InputError(f"logits must have shape (batch, vocab), got {tuple(logits.shape)}")
    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs = sampling.probabilities(logits)
    return torch.multinomial(probs, num_samples=1, generator=sampling.generator).squeeze(-1)


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    *,
    use_cache: bool = True,
) -> torch.Tensor:
    """Continue the prompts ``idx`` (B, T) by up to ``max_new_tokens``; returns (B, T + n).

    Greedy by default; ``sampling`` chooses temperature, top-k, top-p, the end token and the
    random generator. Generation stops early once every sequence has produced
    ``sampling.eos_id``; a sequence that finished before the others gets ``eos_id`` as padding,
    so the batch stays rectangular.

    Past the model's context the window slides: each step reads the last ``context_length``
    tokens. Sliding moves every token to a new absolute position, so no cached key stays valid;
    the cache then steps aside and the window is read in full. Cached and uncached generation
    thus give the same tokens, at any length.

    The model runs in eval mode (its previous mode is restored afterwards) under
    ``torch.inference_mode``; the result is an ordinary tensor, usable in training code.
    """
    _check_generation(model, idx, max_new_tokens, sampling)
    steps = _generate_steps(model, idx, max_new_tokens, sampling, use_cache)
    new_tokens = [token[:, None] for token in steps]  # each (B, 1), inference tensors
    # cat outside inference mode makes an ordinary tensor (one autograd may save)
    return torch.cat([idx, *new_tokens], dim=1)


def stream_generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    *,
    use_cache: bool = True,
) -> Iterator[int]:
    """Like ``generate`` for one prompt ``idx`` (1, T), but yield each new token id as soon as
    it is chosen (``sampling.eos_id`` included, then stop). The model stays in eval mode until
    the iterator is exhausted or closed."""
    if idx.dim() == 2 and idx.size(0) != 1:
        raise InputError(
            f"stream_generate takes one prompt of shape (1, T), got {tuple(idx.shape)}; "
            "use generate for a batch"
        )
    _check_generation(model, idx, max_new_tokens, sampling)
    steps = _generate_steps(model, idx, max_new_tokens, sampling, use_cache)
    return (int(token) for token in steps)


def generate_text(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    *,
    use_cache: bool = True,
    stream: bool | Callable[[str], object] = False,
    allowed_special: str | set[str] = "all",
) -> str:
    """Continue ``prompt`` and return the new text (without the prompt, and without
    ``sampling.eos_id``).

    ``tokenizer`` is tiktoken-like: ``encode(text, allowed_special=...)`` and ``decode(ids)``.
    With ``stream=True`` the text is printed piece by piece as it is generated; a callable
    ``stream`` is called with each piece instead.
    """
    ids = tokenizer.encode(prompt, allowed_special=allowed_special)
    device = model_device(model)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    new_ids = stream_generate(model, idx, max_new_tokens, sampling, use_cache=use_cache)
    if stream is True:
        stream = _print_piece
    pieces = []
    eos_id = sampling.eos_id
    for piece in decode_stream(tokenizer, (token for token in new_ids if token != eos_id)):
        pieces.append(piece)
        if stream:
            stream(piece)
    return "".join(pieces)


def show_continuation(prompt: str, continuation: str) -> str:
    """The prompt in brackets, then the model's continuation, as text to print: readers see
    where the model's own writing starts, and line breaks print as line breaks."""
    return f"[{prompt}]{continuation}"


def decode_stream(tokenizer: Any, token_ids: Iterable[int]) -> Iterator[str]:
    """Yield the text of ``token_ids`` in pieces, as soon as each piece is complete.

    A character of several UTF-8 bytes can be split across tokens; its first tokens alone
    decode to U+FFFD (the replacement character). So the whole list is decoded each time and
    only the new suffix is yielded, held back while the text ends in U+FFFD. Assumes, as for
    byte-level BPE, that the decoded text only grows at its end as tokens are added.
    """
    ids: list[int] = []
    n_yielded = 0  # characters of the text yielded so far
    for token in token_ids:
        ids.append(token)
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd") and len(text) > n_yielded:
            yield text[n_yielded:]
            n_yielded = len(text)
    text = tokenizer.decode(ids)  # bytes left incomplete at the end stay U+FFFD
    if len(text) > n_yielded:
        yield text[n_yielded:]


def _print_piece(piece: str) -> None:
    print(piece, end="", flush=True)


@torch.inference_mode()
def _generate_steps(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling,
    use_cache: bool,
) -> Iterator[torch.Tensor]:
    """Yield the token ids (B,) chosen at each step (arguments as in ``generate``)."""
    eos_id = sampling.eos_id
    with eval_mode(model):
        cache = _new_cache(model, idx, max_new_tokens) if use_cache else None
        tokens = idx
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            logits = _next_token_logits(model, tokens, cache)
            next_token = sample_next_token(logits, sampling)
            if eos_id is not None:
                next_token = next_token.masked_fill(finished, eos_id)  # pad finished rows
                finished |= next_token == eos_id
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            yield next_token
            if eos_id is not None and finished.all():
                return


def _next_token_logits(model: nn.Module, tokens: torch.Tensor, cache: KVCache | None
                       ) -> torch.Tensor:
    """Logits (B, V) for the token after ``tokens`` (B, L), all the tokens so far.

    ``cache`` holds the keys and values of ``tokens[:, :cache.length]``: only the rest is read.
    """
    if cache is not None and tokens.size(1) <= cache.max_length:
        return model(tokens[:, cache.length :], kv_cache=cache, last_only=True)[:, -1, :]
    # Past the context the window slides one token per step. With absolute position embeddings
    # that moves every token to a new position and changes every key and value, so nothing
    # cached stays valid: read the whole window, exactly as uncached generation does.
    return model(tokens[:, -model.config.context_length :], last_only=True)[:, -1, :]


def _new_cache(model: nn.Module, idx: torch.Tensor, max_new_tokens: int) -> KVCache:
    """A cache for the prompt and the new tokens, in the model's dtype and on its device."""
    parameter = next(model.parameters())
    config = model.config
    max_length = min(config.context_length, idx.size(1) + max_new_tokens)
    return KVCache(config, idx.size(0), max_length, parameter.dtype, parameter.device)


def _check_generation(
    model: nn.Module, idx: torch.Tensor, max_new_tokens: int, sampling: Sampling
) -> None:
    context_length = model.config.context_length
    if not isinstance(sampling, Sampling):
        raise InputError(
            f"sampling must be a Sampling, got {type(sampling).__name__}; for example "
            "Sampling(temperature=0.8, top_k=40)"
        )
    if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
        raise InputError(
            f"prompts must be an integer tensor of shape (batch, sequence), got "
            f"{idx.dtype} of shape {tuple(idx.shape)}; for one prompt use ids.unsqueeze(0)"
        )
    if not 1 <= idx.size(1) <= context_length:
        raise InputError(
            f"prompts must hold between 1 and {context_length} tokens (the model's context), "
            f"got {idx.size(1)}; keep only the last ones with idx[:, -{context_length}:]"
        )
    if not _is_whole_number(max_new_tokens) or max_new_tokens < 0:
        raise InputError(
            f"max_new_tokens must be 0 or more (a whole number), got {max_new_tokens!r}"
        )
