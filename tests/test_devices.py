"""``llmcourse.devices``: which devices exist here, and a one-line error for one that does not."""

from __future__ import annotations

import pytest
import torch

from llmcourse.devices import available_devices, check_device
from llmcourse.errors import ConfigError, CourseError


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_the_cpu_is_always_there(cpu_only: None) -> None:
    assert available_devices() == ["cpu"]
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu")) == torch.device("cpu")


def test_gpus_are_listed_and_checked_by_index(two_gpus: None) -> None:
    assert available_devices() == ["cpu", "cuda", "cuda:0", "cuda:1"]
    assert check_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="'cuda:2' is not available: this machine has 2 CUDA"):
        check_device("cuda:2")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cuda", "device 'cuda' is not available: PyTorch finds no CUDA GPU on this machine (or "
                 "was built without CUDA); use one of the devices available here: cpu"),
        ("mps", "device 'mps' is not available: PyTorch finds no Apple GPU (Metal) on this "
                "machine; use one of the devices available here: cpu"),
        ("gpu", "device 'gpu' is not a device name; use one of the devices available here: cpu"),
        ("meta", "device 'meta': models run on cpu, cuda, mps devices only; available here: cpu"),
    ],
)
def test_unavailable_devices_are_one_line_errors(cpu_only: None, name: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check_device(name)
    assert str(raised.value) == message
    assert isinstance(raised.value, CourseError) and isinstance(raised.value, ValueError)
