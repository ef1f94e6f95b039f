"""Which devices a model can run on here, and a check of a device a user names.

``check_device("cuda")`` on a machine without a CUDA GPU raises ``ConfigError`` with a one-line
message that lists the devices there are, instead of the assertion PyTorch raises when the model
is first moved there.
"""

from __future__ import annotations

import torch

from llmcourse.errors import ConfigError

SUPPORTED_TYPES = ("cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """The devices of this machine, as names ``torch.device`` takes: ``cpu``, then ``cuda``
    and each ``cuda:N`` when there are CUDA GPUs, then ``mps`` on an Apple GPU."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{index}" for index in range(torch.cuda.device_count()))]
    if _mps_available():
        names.append("mps")
    return names


def check_device(name: str | torch.device, *, option: str = "device") -> torch.device:
    """``name`` as a ``torch.device``, once it is known to exist on this machine; otherwise
    ``ConfigError`` names the problem and the devices available. ``option`` is how the message
    calls the setting (``--device`` for a command-line option)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"{option} {name!r} is not a device name; use one of the devices available here: "
            f"{', '.join(available_devices())}"
        ) from None
    available = ", ".join(available_devices())
    if device.type not in SUPPORTED_TYPES:
        raise ConfigError(
            f"{option} {str(device)!r}: models run on {', '.join(SUPPORTED_TYPES)} devices only; "
            f"available here: {available}"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{option} {str(device)!r} is not available: PyTorch finds no CUDA GPU on this "
                f"machine (or was built without CUDA); use one of the devices available here: "
                f"{available}"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"{option} {str(device)!r} is not available: this machine has {count} CUDA "
                f"GPU(s); use one of the devices available here: {available}"
            )
    if device.type == "mps" and not _mps_available():
        raise ConfigError(
            f"{option} 'mps' is not available: PyTorch finds no Apple GPU (Metal) on this "
            f"machine; use one of the devices available here: {available}"
        )
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())
