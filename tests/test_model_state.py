"""eval_mode and model_device: the mode is restored after the block, also after an error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmcourse.model_state import eval_mode, model_device


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_turns_dropout_off_and_restores_the_mode(training: bool) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train(training)
    x = torch.ones(64, 4)
    with eval_mode(model) as inside:
        assert inside is model and not model.training and not model[1].training
        assert torch.equal(model(x), model[0](x))  # no dropout inside the block
    assert model.training is training and model[1].training is training


def test_eval_mode_restores_training_mode_when_the_block_raises() -> None:
    model = nn.Linear(2, 2).train()
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training


def test_model_device_is_the_parameters_device() -> None:
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(nn.Linear(2, 2).to(torch.float64)) == torch.device("cpu")
