"""Tests of llmcourse.generation: logit processing, sampling, the KV cache and generation loops."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import pytest
import torch
from torch import nn

from llmcourse.errors import CourseError, InputError
from llmcourse.generation import (
    KVCache,
    Sampling,
    apply_temperature,
    decode_stream,
    generate,
    generate_text,
    sample_next_token,
    stream_generate,
    top_k_filter,
    top_p_filter,
)
from llmcourse.model import GPT, GPTConfig


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


CONFIG = GPTConfig(vocab_size=97, context_length=16, n_layer=2, n_head=2, n_embd=32)
NEG_INF = float("-inf")


def random_gpt(config: GPTConfig = CONFIG, seed: int = 0) -> GPT:
    """A GPT in eval mode whose weights (LayerNorms aside) are drawn with std 0.3, wider than
    GPT-2's init: at the standard init greedy decoding repeats one token, which would hide
    errors in positions and caching."""
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "ln_" not in name:
                parameter.normal_(0.0, 0.3)
    return model


def random_prompts(batch_size: int, length: int, vocab_size: int = 97) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch_size * 100 + length)
    return torch.randint(0, vocab_size, (batch_size, length), generator=generator)


def sliding_window_greedy(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Reference: the plain loop of the book, re-reading the last context_length tokens."""
    context_length = model.config.context_length
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(idx[:, -context_length:])[:, -1, :]
            idx = torch.cat([idx, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return idx


class BigramModel(nn.Module):
    """A stand-in language model whose next token depends only on the last one:
    ``successor[token]`` always wins, by a margin of 10."""

    def __init__(self, successor: list[int], context_length: int = 16):
        super().__init__()
        vocab_size = len(successor)
        self.config = GPTConfig(
            vocab_size=vocab_size, context_length=context_length, n_layer=1, n_head=1, n_embd=1
        )
        self.table = nn.Embedding(vocab_size, vocab_size)
        with torch.no_grad():
            self.table.weight.copy_(10.0 * torch.eye(vocab_size)[successor])

    def forward(
        self, idx: torch.Tensor, kv_cache: object = None, last_only: bool = False
    ) -> torch.Tensor:
        logits = self.table(idx)  # (B, T, V)
        return logits[:, -1:] if last_only else logits


class ByteTokenizer:
    """Every token is one byte of UTF-8, so a character can span several tokens."""

    def encode(self, text: str, allowed_special: object = "all") -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


# --- KV cache ---------------------------------------------------------------------------------


def test_cached_logits_equal_full_forward_logits_at_every_step():
    model = random_gpt()
    tokens = random_prompts(3, CONFIG.context_length)
    cache = KVCache(CONFIG, batch_size=3, max_length=CONFIG.context_length)
    with torch.no_grad():
        chunks = [(0, 5), (5, 8)] + [(t, t + 1) for t in range(8, CONFIG.context_length)]
        for start, end in chunks:  # a prompt, then a chunk of 3 (masked), then one at a time
            assert cache.length == start
            cached = model(tokens[:, start:end], kv_cache=cache)
            full = model(tokens[:, :end])[:, start:end]
            assert cached.shape == (3, end - start, CONFIG.vocab_size)
            torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)
    assert cache.length == CONFIG.context_length


def test_cache_shape_defaults_and_reset():
    cache = KVCache(CONFIG, batch_size=2)
    assert cache.keys.shape == (2, 2, 2, 16, 16)  # (n_layer, B, H, context_length, D)
    assert cache.values.shape == cache.keys.shape
    assert cache.max_length == 16 and cache.length == 0
    model = random_gpt()
    tokens = random_prompts(2, 6)
    with torch.no_grad():
        model(tokens, kv_cache=cache)
        assert cache.length == 6
        cache.reset()
        assert cache.length == 0
        after_reset = model(tokens[:, :4], kv_cache=cache)
        torch.testing.assert_close(after_reset, model(tokens[:, :4]), atol=1e-5, rtol=0)
    assert cache.length == 4


@pytest.mark.parametrize("max_length", [17, 0])
def test_cache_length_must_fit_the_context(max_length):
    with pytest.raises(InputError, match="context length 16") as error:
        KVCache(CONFIG, batch_size=1, max_length=max_length)
    assert isinstance(error.value, CourseError) and isinstance(error.value, ValueError)


def test_cache_refuses_to_overflow():
    model = random_gpt()
    cache = KVCache(CONFIG, batch_size=1, max_length=6)
    with torch.no_grad():
        model(random_prompts(1, 5), kv_cache=cache)
        with pytest.raises(InputError, match="at most 6 positions; 5 are cached and 2 more"):
            model(random_prompts(1, 2), kv_cache=cache)


def test_cache_rejects_wrong_dtype_and_shape():
    cache = KVCache(CONFIG, batch_size=2, dtype=torch.float64)
    keys = torch.zeros(2, 2, 3, 16)
    with pytest.raises(InputError, match="create the KVCache with the model's dtype"):
        cache.update(0, keys, keys)
    wrong_batch = torch.zeros(1, 2, 3, 16, dtype=torch.float64)
    with pytest.raises(InputError, match=r"\(2, 2, 3, 16\)"):
        cache.update(0, wrong_batch, wrong_batch)


# --- logit processing -------------------------------------------------------------------------


def test_temperature_divides_logits():
    logits = torch.tensor([[1.0, 2.0, -4.0], [0.5, 0.0, 3.0]])
    assert torch.equal(apply_temperature(logits, 2.0), torch.tensor([[0.5, 1, -2], [0.25, 0, 1.5]]))
    assert torch.equal(apply_temperature(logits, 0.5), torch.tensor([[2.0, 4, -8], [1, 0, 6]]))
    assert torch.equal(apply_temperature(logits, 1.0), logits)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_must_be_positive(temperature):
    with pytest.raises(InputError, match="temperature must be positive"):
        apply_temperature(torch.zeros(1, 3), temperature)


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor(
        [[3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
    )
    expected = torch.tensor(
        [[NEG_INF, NEG_INF, 4.0, NEG_INF, 5.0, 9.0, NEG_INF], [NEG_INF] * 4 + [4.0, 5.0, 6.0]]
    )
    assert torch.equal(top_k_filter(logits, 3), expected)
    top_1 = top_k_filter(logits, 1)
    assert torch.equal(top_1.isfinite().nonzero(), torch.tensor([[0, 5], [1, 6]]))
    assert torch.equal(top_k_filter(logits, 7), logits)
    assert torch.equal(top_k_filter(logits, 100), logits)


def test_top_k_keeps_ties_at_the_boundary():
    logits = torch.tensor([1.0, 3.0, 3.0, 0.0])
    assert torch.equal(top_k_filter(logits, 1), torch.tensor([NEG_INF, 3.0, 3.0, NEG_INF]))
    assert torch.equal(top_k_filter(logits, 2), torch.tensor([NEG_INF, 3.0, 3.0, NEG_INF]))
    assert torch.equal(top_k_filter(logits, 3), torch.tensor([1.0, 3.0, 3.0, NEG_INF]))


@pytest.mark.parametrize("k", [0, -2, 1.5, True])
def test_top_k_must_be_a_positive_whole_number(k):
    with pytest.raises(InputError, match="top_k must be a whole number"):
        top_k_filter(torch.zeros(1, 4), k)


@pytest.mark.parametrize(
    ("p", "n_kept"), [(0.1, 1), (0.5, 1), (0.6, 2), (0.8, 2), (0.81, 3), (0.95, 3), (0.96, 4)]
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, n_kept):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    order = torch.tensor([2, 0, 3, 1])  # the same distribution, shuffled
    logits = probs[order].log()
    kept = probs[order] >= probs[n_kept - 1]
    expected = logits.masked_fill(~kept, NEG_INF)
    assert torch.equal(top_p_filter(logits, p), expected)


@pytest.mark.parametrize(("p", "n_kept"), [(0.6, 2), (0.8, 3), (0.92, 4)])
def test_top_p_is_not_fooled_by_rounding(p, n_kept):
    # in float32 the first probabilities of these logits add up to slightly less than p
    probs = torch.tensor([0.32, 0.28, 0.2, 0.12, 0.06, 0.02])
    kept = top_p_filter(probs.log(), p).isfinite()
    assert torch.equal(kept, torch.arange(6) < n_kept)


def test_top_p_filters_each_row_and_keeps_every_token_at_p_equal_1():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.7, 0.1]]).log()
    expected = logits.clone()
    expected[0, 2:] = NEG_INF
    expected[1, [0, 3]] = NEG_INF
    assert torch.equal(top_p_filter(logits, 0.8), expected)
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_top_p_always_keeps_the_most_probable_token_and_its_ties():
    logits = torch.tensor([[0.0, 10.0, 10.0, -5.0]])
    assert torch.equal(top_p_filter(logits, 1e-9), torch.tensor([[NEG_INF, 10, 10, NEG_INF]]))


@pytest.mark.parametrize("p", [0.0, -0.1, 1.01])
def test_top_p_must_be_a_probability(p):
    with pytest.raises(InputError, match=r"top_p must be a probability in \(0, 1\]"):
        top_p_filter(torch.zeros(1, 4), p)


# --- sampling ---------------------------------------------------------------------------------


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 2.0, -1.0], [5.0, 4.9, 0.0]])
    assert torch.equal(sample_next_token(logits, Sampling(temperature=0)), torch.tensor([1, 0]))
    assert torch.equal(sample_next_token(logits), torch.tensor([1, 0]))  # greedy by default


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy():
    logits = torch.randn(8, 97, generator=torch.Generator().manual_seed(0))
    first, second = (
        sample_next_token(logits, Sampling(1.0, generator=torch.Generator().manual_seed(3)))
        for _ in range(2)
    )
    assert torch.equal(first, second)
    greedy = logits.argmax(dim=-1)
    assert not torch.equal(first, greedy)  # plain sampling does wander off the argmax
    for temperature in (0.5, 1.0, 5.0):
        assert torch.equal(sample_next_token(logits, Sampling(temperature, top_k=1)), greedy)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, None, None), (0.7, None, None), (2.0, 3, None)]
)
def test_sampling_frequencies_match_the_distribution(temperature, top_k, top_p):
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])
    scaled = logits / temperature
    if top_k is not None:
        scaled[scaled.argsort(descending=True)[top_k:]] = NEG_INF
    expected = torch.softmax(scaled, dim=-1)
    n_draws = 20_000
    sampling = Sampling(temperature, top_k, top_p, generator=torch.Generator().manual_seed(0))
    draws = sample_next_token(logits.expand(n_draws, -1), sampling)
    frequencies = torch.bincount(draws, minlength=5) / n_draws
    assert (frequencies - expected).abs().max() < 0.02
    assert torch.equal(frequencies == 0, expected == 0)


def test_sampling_with_top_p_draws_only_from_the_nucleus():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    draws = sample_next_token(
        logits.expand(20_000, -1),
        Sampling(1.0, top_p=0.8, generator=torch.Generator().manual_seed(0)),
    )
    frequencies = torch.bincount(draws, minlength=4) / 20_000
    assert (frequencies - torch.tensor([0.625, 0.375, 0.0, 0.0])).abs().max() < 0.02
    assert frequencies[2:].sum() == 0


def test_sampling_settings_are_checked_when_made():
    with pytest.raises(InputError, match="temperature must be 0 .greedy. or positive"):
        Sampling(temperature=-0.5)
    with pytest.raises(InputError, match="top_k"):
        Sampling(temperature=0, top_k=0)
    with pytest.raises(InputError, match="top_p"):
        Sampling(1.0, top_p=2.0)
    for eos_id in (-1, 2.5, "7"):
        with pytest.raises(InputError, match="eos_id must be a token id"):
            Sampling(eos_id=eos_id)
    with pytest.raises(InputError, match=r"shape \(batch, vocab\)"):
        sample_next_token(torch.zeros(5))


def test_sampling_probabilities_are_what_is_drawn_from():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    torch.testing.assert_close(Sampling().probabilities(logits), torch.tensor([[1.0, 0, 0, 0]]))
    torch.testing.assert_close(Sampling(2.0).probabilities(logits), torch.softmax(logits / 2, -1))
    top_2 = Sampling(1.0, top_k=2).probabilities(logits)
    torch.testing.assert_close(top_2[0, :2], torch.softmax(logits[0, :2], -1))
    assert top_2[0, 2:].sum() == 0


# --- generation -------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize(("prompt_length", "max_new_tokens"), [(1, 6), (5, 40), (9, 7), (16, 3)])
def test_greedy_generation_with_and_without_cache_matches_sliding_window(
    batch_size, prompt_length, max_new_tokens
):
    model = random_gpt()
    prompts = random_prompts(batch_size, prompt_length)
    expected = sliding_window_greedy(model, prompts, max_new_tokens)
    assert len(set(expected[:, prompt_length:].flatten().tolist())) > 1  # a non-trivial run
    cached = generate(model, prompts, max_new_tokens)
    uncached = generate(model, prompts, max_new_tokens, use_cache=False)
    assert torch.equal(cached, expected)
    assert torch.equal(uncached, expected)


def test_sampled_generation_with_and_without_cache_agree():
    model = random_gpt()
    prompts = random_prompts(2, 5)
    runs = [
        generate(
            model,
            prompts,
            30,
            Sampling(0.8, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(7)),
            use_cache=use_cache,
        )
        for use_cache in (True, False)
    ]
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (2, 35)


def test_generation_stops_when_the_model_predicts_eos():
    model = random_gpt()
    eos_id = 7
    with torch.no_grad():  # make every position predict eos: ln_f outputs ones, row eos is raised
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[eos_id] += 10.0
    prompts = random_prompts(2, 4)
    for use_cache in (True, False):
        out = generate(model, prompts, 10, Sampling(eos_id=eos_id), use_cache=use_cache)
        assert torch.equal(out, torch.cat([prompts, torch.full((2, 1), eos_id)], dim=1))


def test_finished_sequences_are_padded_with_eos_until_all_finish():
    model = BigramModel(successor=[(token + 1) % 10 for token in range(10)])
    prompts = torch.tensor([[3], [1]])
    out = generate(model, prompts, 8, Sampling(eos_id=5), use_cache=False)
    assert torch.equal(out, torch.tensor([[3, 4, 5, 5, 5], [1, 2, 3, 4, 5]]))
    no_eos = generate(model, prompts, 8, use_cache=False)
    assert torch.equal(no_eos[0], torch.tensor([3, 4, 5, 6, 7, 8, 9, 0, 1]))


def test_zero_new_tokens_returns_the_prompt():
    prompts = random_prompts(2, 5)
    assert torch.equal(generate(random_gpt(), prompts, 0), prompts)


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        (random_prompts(1, 17), r"between 1 and 16 tokens .* idx\[:, -16:\]"),
        (torch.zeros(1, 0, dtype=torch.long), "between 1 and 16 tokens"),
        (torch.zeros(5, dtype=torch.long), r"shape \(batch, sequence\)"),
        (torch.zeros(1, 5), r"integer tensor"),
    ],
)
def test_bad_prompts_are_rejected(prompts, message):
    with pytest.raises(InputError, match=message):
        generate(random_gpt(), prompts, 3)


def test_bad_generation_arguments_are_rejected():
    model, prompts = random_gpt(), random_prompts(1, 3)
    with pytest.raises(InputError, match="max_new_tokens must be 0 or more"):
        generate(model, prompts, -1)
    with pytest.raises(InputError, match="sampling must be a Sampling"):
        generate(model, prompts, 3, {"temperature": 1.0})


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"temperature": float("nan")}, "temperature must be 0 .greedy. or positive .and finite."),
        ({"temperature": float("inf")}, "temperature must be 0 .greedy. or positive .and finite."),
        ({"temperature": -0.5}, "temperature must be 0 .greedy. or positive .and finite."),
        ({"temperature": "hot"}, "temperature must be 0 .greedy. or positive .and finite."),
        ({"temperature": 1.0, "top_k": 0}, "top_k must be a whole number of tokens, at least 1"),
        ({"temperature": 1.0, "top_k": 2.5}, "top_k must be a whole number"),
        ({"temperature": 1.0, "top_p": 0.0}, r"top_p must be a probability in \(0, 1\]"),
        ({"temperature": 1.0, "top_p": 1.5}, r"top_p must be a probability in \(0, 1\]"),
        ({"temperature": 1.0, "top_p": float("nan")}, r"top_p must be a probability"),
    ],
)
def test_bad_sampling_settings_are_course_errors(options, match):
    with pytest.raises(InputError, match=match) as error:
        Sampling(**options)
    assert isinstance(error.value, CourseError)


def test_bad_numbers_of_new_tokens_and_temperatures_are_rejected_everywhere():
    model, prompts = random_gpt(), random_prompts(1, 3)
    for count in (-1, 2.5, True):
        with pytest.raises(InputError, match="max_new_tokens must be 0 or more .a whole"):
            generate(model, prompts, count)
    logits = torch.zeros(1, 97)
    with pytest.raises(InputError, match="temperature must be positive .and finite."):
        apply_temperature(logits, float("inf"))


def test_generation_runs_in_eval_mode_and_restores_training_mode():
    model = random_gpt(replace(CONFIG, dropout=0.5))
    prompts = random_prompts(2, 5)
    expected = sliding_window_greedy(model, prompts, 20)  # eval mode: no dropout
    model.train()
    out = generate(model, prompts, 20)
    assert model.training and all(module.training for module in model.modules())
    assert torch.equal(out, expected)
    assert not out.is_inference() and not out.requires_grad


# --- streaming --------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_stream_generate_yields_the_tokens_of_generate(temperature):
    model = random_gpt()
    prompt = random_prompts(1, 5)
    out = generate(model, prompt, 30, Sampling(temperature, 30, generator=seeded(1)))
    streamed = stream_generate(model, prompt, 30, Sampling(temperature, 30, generator=seeded(1)))
    assert list(streamed) == out[0, 5:].tolist()


def test_stream_generate_stops_after_eos_and_takes_one_prompt():
    model = BigramModel(successor=[(token + 1) % 10 for token in range(10)])
    model.train()
    streamed = stream_generate(model, torch.tensor([[3]]), 8, Sampling(eos_id=5), use_cache=False)
    assert list(streamed) == [4, 5]
    assert model.training
    with pytest.raises(InputError, match="one prompt of shape"):
        stream_generate(model, torch.tensor([[3], [4]]), 8)


def test_decode_stream_holds_back_split_characters():
    tokenizer = ByteTokenizer()
    text = "naïve café: 5€ 🙂!"
    pieces = list(decode_stream(tokenizer, tokenizer.encode(text)))
    assert pieces == list(text)  # each multi-byte character comes out whole, in one piece


def test_decode_stream_ends_with_the_replacement_of_incomplete_bytes():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("a€")[:-1]  # the euro sign's last byte is missing
    assert list(decode_stream(tokenizer, ids)) == ["a", "\ufffd"]


def byte_chain_model(text: str, start: str, eos_id: int = 0) -> BigramModel:
    """A bigram model over bytes that, after ``start``, writes ``text`` then eos."""
    chain = list(start.encode("utf-8")) + list(text.encode("utf-8")) + [eos_id]
    successor = [eos_id] * 256
    for current, following in pairwise(chain):
        successor[current] = following
    return BigramModel(successor, context_length=32)


def test_generate_text_streams_whole_characters_and_drops_eos(capsys):
    model = byte_chain_model("é€ ok", start="x")
    pieces = []
    text = generate_text(
        model, ByteTokenizer(), "x", 20, Sampling(eos_id=0), use_cache=False, stream=pieces.append
    )
    assert text == "é€ ok"
    assert pieces == ["é", "€", " ", "o", "k"]
    printed = generate_text(
        model, ByteTokenizer(), "x", 3, Sampling(eos_id=0), use_cache=False, stream=True
    )
    assert printed == "é\ufffd"  # the bytes of "é", then the first byte of "€" alone
    assert capsys.readouterr().out == "é\ufffd"


def test_generate_text_decodes_the_tokens_of_generate():
    model = random_gpt(replace(CONFIG, vocab_size=256))
    tokenizer = ByteTokenizer()
    prompt = "Once"
    out = generate(model, torch.tensor([tokenizer.encode(prompt)]), 12)
    expected = tokenizer.decode(out[0, len(prompt) :].tolist())
    assert generate_text(model, tokenizer, prompt, 12) == expected


def test_show_continuation_marks_the_prompt_and_keeps_the_text_as_text():
    from llmcourse.generation import show_continuation

    assert show_continuation("Once upon", " a time,\n\"she said\"") == (
        "[Once upon] a time,\n\"she said\"")
