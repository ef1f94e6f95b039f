"""The GPT model: configuration, causal self-attention, the transformer block and the full network.

Parameter names follow OpenAI's GPT-2 checkpoints as published on the Hugging Face hub
(``transformer.wte``, ``transformer.h.0.attn.c_attn``, ``lm_head`` ...), so pretrained weights
load by name. Shapes in comments use B = batch, T = sequence length, C = embedding size,
H = number of heads, D = head size (C / H).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.embeddings import embed_tokens_and_positions
from llmcourse.errors import ConfigError, InputError

IGNORE_INDEX = -100  # targets with this value do not count in the loss


@dataclass(frozen=True)
class GPTConfig:
    """The hyper-parameters that fix a GPT's shape.

    ``context_length`` is the longest sequence the model reads (the size of the positional
    embedding table); ``qkv_bias`` adds a bias to the query/key/value projection (GPT-2 has one);
    ``tie_embeddings`` shares the token embedding matrix with the output layer (as GPT-2 does).
    """

    vocab_size: int = 50257
    context_length: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    qkv_bias: bool = True
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(
                    f"GPTConfig.{name} must be a positive integer, got {value!r}"
                )
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                "each head gets n_embd / n_head dimensions"
            )
        if (
            not isinstance(self.dropout, int | float)
            or isinstance(self.dropout, bool)
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ConfigError(
                f"GPTConfig.dropout must be a probability in [0, 1), got {self.dropout!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def preset(cls, name: str, **overrides: object) -> GPTConfig:
        """A named configuration (see ``PRESETS``), with any field overridden by keyword."""
        if name not in PRESETS:
            known = ", ".join(PRESETS)
            raise ConfigError(f"unknown model preset {name!r}; choose one of: {known}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"GPTConfig has no field(s) {sorted(unknown)}")
        return replace(PRESETS[name], **overrides)


PRESETS: dict[str, GPTConfig] = {
    # OpenAI's four GPT-2 sizes (parameter counts with tied embeddings).
    "gpt2-small": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    # The course's own sizes: GPT-2's tokenizer, small enough to train on a laptop CPU.
    "course-tiny": GPTConfig(context_length=64, n_layer=2, n_head=2, n_embd=64),
    "course-small": GPTConfig(context_length=256, n_layer=4, n_head=4, n_embd=256),
}


class KVCacheLike(Protocol):
    """What attention needs from a key/value cache (``llmcourse.generation.KVCache``)."""

    length: int

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees itself and earlier positions only."""

    def __init__(self, config: GPTConfig, layer_index: int = 0):
        super().__init__()
        self.n_head = config.n_head
        self.layer_index = layer_index
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCacheLike | None = None) -> torch.Tensor:
        """Attend over ``x`` (B, T, C) with PyTorch's fused kernel; returns (B, T, C)."""
        B, T, C = x.shape
        past = kv_cache.length if kv_cache is not None else 0
        q, k, v = self._heads(x)  # 3 x (B, H, T, D)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_index, k, v)  # (B, H, past + T, D)
        dropout_p = self.dropout if self.training else 0.0
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif T == 1:  # a single new query sees every cached key: no mask needed
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            mask = causal_mask(T, past, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        return self._output(y)

    def explicit_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same attention over ``x`` (B, T, C) with the formula written out
        (``explicit_attention``): slower than ``forward``, but it also returns the attention
        weights (B, H, T, T) before dropout, for figures. Returns (output (B, T, C), weights)."""
        q, k, v = self._heads(x)
        mask = causal_mask(x.size(1), 0, x.device)  # (T, T), True where allowed
        y, weights = explicit_attention(q, k, v, mask, self.attn_dropout)
        return self._output(y), weights

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of ``x`` (B, T, C), each split into heads: (B, H, T, D)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        return tuple(t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        """Merge the heads of ``y`` (B, H, T, D) and project: (B, T, C)."""
        B, H, T, D = y.shape
        y = y.transpose(1, 2).contiguous().view(B, T, H * D)
        return self.resid_dropout(self.c_proj(y))


def causal_mask(n_queries: int, n_past: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean mask (n_queries, n_past + n_queries): query i may see key j iff j <= n_past + i."""
    keys = torch.arange(n_past + n_queries, device=device)
    queries = torch.arange(n_past, n_past + n_queries, device=device)
    return keys[None, :] <= queries[:, None]


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    dropout: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention written out: softmax(q k^T / sqrt(D), masked) v.

    q (B, H, T, D), k and v (B, H, S, D), mask (T, S) with True where allowed.
    Returns the output (B, H, T, D) and the attention weights (B, H, T, S) before dropout.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, S)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    dropped = dropout(weights) if dropout is not None else weights
    return dropped @ v, weights


class MLP(nn.Module):
    """The position-wise feed-forward network: expand 4x, GELU (tanh approximation), project."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer_index: int = 0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCacheLike | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache)  # shortcut connection around attention
        x = x + self.mlp(self.ln_2(x))  # and around the feed-forward network
        return x  # (B, T, C)


class GPT(nn.Module):
    """A GPT-2-style decoder-only transformer language model."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.context_length, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=1e-5),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self._transposed_head: tuple[tuple[int, int, torch.dtype], torch.Tensor] | None = None
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 * n_layer),
        # so the stream's variance does not grow with depth.
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCacheLike | None = None,
        last_only: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits (B, T, vocab_size) for token ids ``idx`` (B, T).

        With ``targets`` (B, T) also returns the mean cross-entropy loss over targets that are not
        -100. With ``kv_cache`` the ids continue the cached sequence (positions start after it).
        ``last_only=True`` returns the logits of the last position only, (B, 1, vocab_size): all
        that generation needs, and it skips the output layer's work for the other positions.
        """
        if last_only and targets is not None:
            raise InputError("last_only=True gives no loss: the loss needs every position's logits")
        past = kv_cache.length if kv_cache is not None else 0
        self.check_input(idx, past)
        if targets is not None:
            self.check_targets(targets, idx)
        x = embed_tokens_and_positions(self.transformer.wte, self.transformer.wpe, idx, past)
        x = self.transformer.drop(x)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, kv_cache)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        logits = self._output_layer(self.transformer.ln_f(x))  # (B, T, V), T = 1 if last_only
        if targets is None:
            return logits
        return logits, self.loss(logits, targets)

    def train(self, mode: bool = True) -> GPT:
        self._transposed_head = None  # a switch of mode frees generation's copy (see below)
        return super().train(mode)

    def _output_layer(self, x: torch.Tensor) -> torch.Tensor:
        """``lm_head(x)`` for x (B, T, C).

        Generation multiplies one position at a time by the (V, C) output matrix, the largest of
        GPT-2 small, and a CPU reads a contiguous copy of its transpose about twice as fast as
        the transposed view ``nn.Linear`` uses. So for one position, without gradients, on the
        CPU, a plain ``nn.Linear`` head multiplies by that copy. The copy (V x C floats, 154 MB
        for GPT-2) is made again whenever the weight changes, and freed by ``train()`` or
        ``eval()``, which generation calls when it starts and ends. A wrapped head (LoRA) runs
        itself.
        """
        head = self.lm_head
        if (
            x.size(1) != 1
            or torch.is_grad_enabled()
            or type(head) is not nn.Linear
            or head.weight.device.type != "cpu"
        ):
            return head(x)
        weight = head.weight
        key = (weight.data_ptr(), weight._version, weight.dtype)
        if self._transposed_head is None or self._transposed_head[0] != key:
            self._transposed_head = (key, weight.detach().t().contiguous())
        return x @ self._transposed_head[1]

    def check_input(self, idx: torch.Tensor, past: int = 0) -> None:
        """Raise ``InputError`` unless ``idx`` is a (B, T) integer tensor of valid token ids
        that fits in the context after ``past`` cached positions.

        On an accelerator the range of the ids is checked without waiting for the device
        (``torch._assert_async``): a bad id fails the next time the device is read, with this
        message."""
        if idx.dim() != 2:
            raise InputError(
                f"token ids must have shape (batch, sequence), got {tuple(idx.shape)}; "
                "for a single sequence use ids.unsqueeze(0)"
            )
        if idx.dtype not in (torch.int64, torch.int32):
            raise InputError(f"token ids must be an integer tensor, got dtype {idx.dtype}")
        length = past + idx.size(1)
        if length > self.config.context_length:
            raise InputError(
                f"sequence of {length} tokens is longer than the model's context of "
                f"{self.config.context_length}; keep only the last "
                f"{self.config.context_length} tokens (ids[:, -context_length:])"
            )
        if not idx.numel():
            return
        if idx.device.type != "cpu":  # reading the range back would wait for the device
            torch._assert_async(
                ((idx >= 0) & (idx < self.config.vocab_size)).all(),
                f"token ids must lie in [0, {self.config.vocab_size - 1}] for this model's "
                "vocabulary; was the text encoded with a different tokenizer?",
            )
        elif idx.min() < 0 or idx.max() >= self.config.vocab_size:
            raise InputError(
                f"token ids must lie in [0, {self.config.vocab_size - 1}] for this model's "
                f"vocabulary, got values from {int(idx.min())} to {int(idx.max())}; "
                "was the text encoded with a different tokenizer?"
            )

    def check_targets(self, targets: torch.Tensor, idx: torch.Tensor) -> None:
        """Raise ``InputError`` unless ``targets`` has the shape of the inputs ``idx`` and holds
        token ids of the vocabulary or -100 (a target to ignore). Checked before the forward
        pass: an id outside the vocabulary would otherwise fail deep inside the loss (an
        IndexError on the CPU, a device-side assertion on a GPU). On an accelerator the range
        is checked without waiting for the device, as in ``check_input``."""
        if targets.shape != idx.shape:
            raise InputError(
                f"targets must have the shape of the inputs {tuple(idx.shape)}, "
                f"got {tuple(targets.shape)}"
            )
        if targets.dtype != torch.int64:
            raise InputError(
                f"targets must be an int64 (long) tensor of token ids, got {targets.dtype}; "
                "convert them with targets.long()"
            )
        vocab_size = self.config.vocab_size
        invalid = (targets >= vocab_size) | ((targets < 0) & (targets != IGNORE_INDEX))
        if targets.device.type != "cpu":  # reading the result back would wait for the device
            torch._assert_async(
                ~invalid.any(),
                f"targets must be token ids in [0, {vocab_size - 1}] or {IGNORE_INDEX} (ignored)",
            )
        elif invalid.any():
            bad = targets[invalid]
            raise InputError(
                f"targets must be token ids in [0, {vocab_size - 1}] or {IGNORE_INDEX} (ignored), "
                f"got {int(bad[0])} ({bad.numel()} target(s) out of range, from {int(bad.min())} "
                f"to {int(bad.max())}); check how the targets were made: were they encoded with "
                "a different tokenizer, or padded with another value than -100?"
            )

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of logits (B, T, V) against targets (B, T); -100 is ignored."""
        if targets.shape != logits.shape[:2]:
            raise InputError(
                f"targets must have the shape of the inputs {tuple(logits.shape[:2])}, "
                f"got {tuple(targets.shape)}"
            )
        return F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX
        )

    def num_parameters(self, *, non_embedding: bool = False) -> int:
        """Number of distinct parameters (a tied matrix counts once).

        ``non_embedding`` leaves out the token and position tables (and an untied output layer),
        the count that sets the model's compute per token."""
        count = sum(p.numel() for p in self.parameters())
        if non_embedding:
            count -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                count -= self.lm_head.weight.numel()
        return count


def attention_weights(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    """The attention weights of every layer of ``model`` reading token ids ``idx`` (B, T): one
    (B, H, T, T) tensor per layer, each row a softmax over the positions it may see.

    A forward hook on each layer's attention hands its input to ``explicit_forward``, which
    computes the weights that the fused kernel never returns; the model itself runs unchanged.
    Weights are taken before dropout: put the model in eval mode to see what it computes at
    inference. No gradients are tracked.
    """
    weights: list[torch.Tensor] = []

    def record(module: CausalSelfAttention, args: tuple[torch.Tensor, ...], _: object) -> None:
        weights.append(module.explicit_forward(args[0])[1])

    handles = [block.attn.register_forward_hook(record) for block in model.transformer.h]
    try:
        with torch.no_grad():
            model(idx)
    finally:
        for handle in handles:
            handle.remove()
    return weights


def count_parameters(config: GPTConfig) -> int:
    """The number of parameters of ``GPT(config)``, computed from the shapes without building it."""
    C, V = config.n_embd, config.vocab_size
    attention = C * 3 * C + (3 * C if config.qkv_bias else 0) + C * C + C
    mlp = C * 4 * C + 4 * C + 4 * C * C + C
    layer_norms = 2 * 2 * C
    embeddings = V * C + config.context_length * C
    output = 0 if config.tie_embeddings else V * C
    return embeddings + config.n_layer * (attention + mlp + layer_norms) + 2 * C + output


def memory_bytes(num_parameters: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes to hold ``num_parameters`` weights of ``dtype`` (weights only, no activations)."""
    return num_parameters * torch.empty((), dtype=dtype).element_size()
