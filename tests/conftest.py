"""Shared test set-up: point the data registry at the local mirror of the course's data files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

if "LLMCOURSE_DATA_MIRROR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["LLMCOURSE_DATA_MIRROR"] = str(SHARED_DATA)


def _mirror() -> Path:
    mirror = os.environ.get("LLMCOURSE_DATA_MIRROR")
    if not mirror or not Path(mirror).is_dir():
        pytest.skip("no data mirror: set LLMCOURSE_DATA_MIRROR to a copy of shared/data")
    return Path(mirror)


@pytest.fixture
def data_mirror() -> Path:
    """The mirror directory of the course's data files; skips the test when there is none."""
    return _mirror()


@pytest.fixture(scope="module")
def module_data_mirror() -> Path:
    """``data_mirror`` for module-scoped fixtures (data built once for a whole test module)."""
    return _mirror()
