from __future__ import annotations

import pytest
import torch

from llmcourse.embeddings import TokenAndPositionEmbedding, embed_tokens_and_positions


def test_chapter_three_shapes():
    torch.manual_seed(0)
    layer = TokenAndPositionEmbedding(vocab_size=50257, context_length=4, dim=256)
    ids = torch.randint(0, 50257, (8, 4))
    assert layer(ids).shape == (8, 4, 256)


def test_output_is_token_row_plus_position_row():
    layer = TokenAndPositionEmbedding(vocab_size=5, context_length=3, dim=2)
    with torch.no_grad():
        layer.wte.weight.copy_(torch.arange(10.0).view(5, 2))
        layer.wpe.weight.copy_(torch.tensor([[100.0, 0.0], [200.0, 0.0], [300.0, 0.0]]))
    out = layer(torch.tensor([[4, 0, 4]]))
    expected = torch.tensor([[[108.0, 9.0], [200.0, 1.0], [308.0, 9.0]]])
    assert torch.equal(out, expected)


def test_same_token_at_different_positions_differs():
    torch.manual_seed(1)
    layer = TokenAndPositionEmbedding(vocab_size=10, context_length=4, dim=8)
    out = layer(torch.tensor([[3, 3, 3, 3]]))
    assert not torch.allclose(out[0, 0], out[0, 1])


def test_positions_can_start_later():
    wte, wpe = torch.nn.Embedding(5, 2), torch.nn.Embedding(6, 2)
    ids = torch.tensor([[1, 2]])
    shifted = embed_tokens_and_positions(wte, wpe, ids, start=3)
    assert torch.equal(shifted, wte(ids) + wpe(torch.tensor([3, 4])))


def test_tables_are_trainable_parameters():
    layer = TokenAndPositionEmbedding(vocab_size=7, context_length=3, dim=4)
    layer(torch.tensor([[1, 2, 3]])).sum().backward()
    assert layer.wte.weight.grad[1].abs().sum() > 0
    assert layer.wte.weight.grad[0].abs().sum() == 0  # id 0 was not looked up


def test_too_long_sequence_is_rejected():
    layer = TokenAndPositionEmbedding(vocab_size=7, context_length=3, dim=4)
    with pytest.raises(ValueError, match="exceeds the 3 positions"):
        layer(torch.zeros(1, 4, dtype=torch.long))
