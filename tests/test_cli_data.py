"""``llmcourse data list`` and ``llmcourse data fetch``."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

from llmcourse import datasets
from llmcourse.cli import main

NAMES = [entry.name for entry in datasets.registry()]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(datasets.CACHE_ENV, str(root))
    return root / "data"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No network: every URL fails. Returns the URLs that were tried."""
    tried: list[str] = []

    def unreachable(url: str, headers: dict[str, str]) -> None:
        tried.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets, "open_url", unreachable)
    return tried


def table_rows(output: str) -> dict[str, list[str]]:
    """The rows of ``data list`` keyed by name, each split into its columns."""
    header, *rows = output.splitlines()
    assert header.split()[:2] == ["name", "bytes"]
    return {row.split()[0]: row.split("  ") for row in rows}


def test_list_shows_every_file_in_the_mirror(
    data_mirror: Path, offline: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "list"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert list(rows) == NAMES
    for entry in datasets.registry():
        cells = [cell.strip() for cell in rows[entry.name] if cell.strip()]
        assert cells == [entry.name, f"{entry.size:,}", entry.license, "mirror", entry.url]
    assert offline == []


def test_list_tells_cached_corrupt_and_missing_apart(
    data_mirror: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(datasets.MIRROR_ENV)
    cache.mkdir(parents=True)
    (cache / "the-verdict.txt").write_bytes((data_mirror / "the-verdict.txt").read_bytes())
    (cache / "instruction-data.json").write_bytes(b"[]")
    assert main(["data", "list"]) == 0
    rows = table_rows(capsys.readouterr().out)
    status = {name: [cell.strip() for cell in row if cell.strip()][3] for name, row in rows.items()}
    assert status["the-verdict"] == "cache"
    assert status["instruction-data"] == "corrupt cache copy"
    assert [status[name] for name in NAMES[2:]] == ["-"] * (len(NAMES) - 2)


def test_fetch_all_from_the_mirror(
    data_mirror: Path, offline: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "fetch", "--all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = [(e.name, str(data_mirror / e.relative_path)) for e in datasets.registry()]
    assert [tuple(line.split()) for line in lines] == expected
    assert offline == []


def test_fetch_named_files(data_mirror: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "fetch", "gpt2-vocab", "sms-spam"]) == 0
    assert capsys.readouterr().out.split() == [
        "gpt2-vocab", str(data_mirror / "gpt2" / "vocab.bpe"),
        "sms-spam", str(data_mirror / "SMSSpamCollection.tsv"),
    ]


def test_fetch_offline_without_mirror_fails_with_instructions(
    cache: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(datasets.MIRROR_ENV, raising=False)
    assert main(["data", "fetch", "the-verdict"]) == 2
    entry = datasets.get("the-verdict")
    error = capsys.readouterr().err
    assert error.startswith("error: could not download the-verdict (the-verdict.txt)")
    assert entry.url in error
    assert str(cache / "the-verdict.txt") in error
    assert datasets.MIRROR_ENV in error
    assert "Traceback" not in error
    assert offline == [entry.url]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "fetch", "the-verdict", "nope"], "unknown data file 'nope'; known names: "),
        (["data", "fetch"], "name the data files to fetch or pass --all"),
        (["data", "fetch", "--all", "the-verdict"], "name the data files to fetch or pass --all"),
    ],
)
def test_fetch_bad_arguments_fail_before_any_work(
    argv: list[str], message: str, offline: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert ", ".join(NAMES) in captured.err
    assert captured.out == ""
    assert offline == []


def test_console_script_fetches_all_from_the_mirror(data_mirror: Path, cache: Path) -> None:
    script = Path(sys.executable).with_name("llmcourse")
    if not script.is_file():
        pytest.skip(f"console script not installed next to {sys.executable}")
    environment = {**os.environ, datasets.MIRROR_ENV: str(data_mirror)}
    result = subprocess.run(
        [str(script), "data", "fetch", "--all"],
        capture_output=True, text=True, env=environment, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["the-verdict", str(data_mirror / "the-verdict.txt")]
    assert len(result.stdout.splitlines()) == len(NAMES)
    assert not cache.exists()
