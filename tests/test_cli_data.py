"""``llmcourse data list``, ``llmcourse data fetch`` and ``llmcourse data story-instructions``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

from llmcourse import data_files
from llmcourse import story_instructions as si
from llmcourse.cli import main

NAMES = [entry.name for entry in data_files.registry()]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(data_files.CACHE_ENV, str(root))
    return root / "data"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No network: every URL fails. Returns the URLs that were tried."""
    tried: list[str] = []

    def unreachable(url: str, headers: dict[str, str]) -> None:
        tried.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(data_files, "open_url", unreachable)
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
    for entry in data_files.registry():
        cells = [cell.strip() for cell in rows[entry.name] if cell.strip()]
        assert cells == [entry.name, f"{entry.size:,}", entry.license, "mirror", entry.url]
    assert offline == []


def test_list_tells_cached_corrupt_and_missing_apart(
    data_mirror: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(data_files.MIRROR_ENV)
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
    expected = [(e.name, str(data_mirror / e.relative_path)) for e in data_files.registry()]
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
    monkeypatch.delenv(data_files.MIRROR_ENV, raising=False)
    assert main(["data", "fetch", "the-verdict"]) == 2
    entry = data_files.get("the-verdict")
    error = capsys.readouterr().err
    assert error.startswith("error: could not download the-verdict (the-verdict.txt)")
    assert entry.url in error
    assert str(cache / "the-verdict.txt") in error
    assert data_files.MIRROR_ENV in error
    assert "Traceback" not in error
    assert offline == [entry.url]


def test_a_file_as_cache_folder_is_a_one_line_error(
    tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(data_files.MIRROR_ENV, raising=False)
    a_file = tmp_path / "cache.txt"
    a_file.write_text("not a folder")
    monkeypatch.setenv(data_files.CACHE_ENV, str(a_file))
    assert main(["data", "fetch", "the-verdict"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"error: the cache folder {a_file} (from ${data_files.CACHE_ENV}) is a file, not a "
        f"directory; point {data_files.CACHE_ENV} at a directory (or unset it to use "
        "~/.cache/llmcourse)\n"
    )
    assert offline == []


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
    environment = {**os.environ, data_files.MIRROR_ENV: str(data_mirror)}
    result = subprocess.run(
        [str(script), "data", "fetch", "--all"],
        capture_output=True, text=True, env=environment, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["the-verdict", str(data_mirror / "the-verdict.txt")]
    assert len(result.stdout.splitlines()) == len(NAMES)
    assert not cache.exists()


# ---------------------------------------------------------------------------------------------
# data story-instructions


def stories_text(count: int = 40) -> str:
    """``count`` short stories in the TinyStories layout, each with its own main character."""
    names = ("Lily", "Tom", "Mia", "Ben", "Zoe")
    return f"\n{si.STORY_SEPARATOR}\n".join(
        f"Once upon a time, there was a little girl named {names[i % 5]}. {names[i % 5]} had a "
        f"red kite number {i}. One day, {names[i % 5]} took the kite to the park and flew it "
        "high. At night, she went home and slept well."
        for i in range(count)
    )


@pytest.fixture
def stories_file(tmp_path: Path) -> Path:
    path = tmp_path / "stories.txt"
    path.write_text(stories_text(), encoding="utf-8")
    return path


def test_story_instructions_are_written_with_their_counts(
    stories_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "story-instructions.json"
    assert main(["data", "story-instructions", "--out", str(out), "--corpus", str(stories_file),
                 "--seed", "5", "--val-fraction", "0.25"]) == 0
    split = si.build_story_instructions(stories_text(), val_fraction=0.25, seed=5)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written == {"train": split.train, "validation": split.validation, "test": split.test}
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"wrote {out}: {len(split.train)} training, {len(split.validation)} "
                        f"validation and {len(split.test)} test entries")
    assert lines[1].split() == ["task", "train", "validation", "test"]
    counts = {line.split()[0]: [int(count) for count in line.split()[1:]] for line in lines[2:]}
    assert list(counts) == list(si.TASKS)
    for task, (train, validation, test) in counts.items():
        assert train == sum(entry["task"] == task for entry in split.train) > 0
        assert validation == sum(entry["task"] == task for entry in split.validation)
        assert test == sum(entry["task"] == task for entry in split.test) > 0


def test_story_instructions_replace_a_file_only_when_told(
    stories_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "story-instructions.json"
    out.write_text("keep me")
    command = ["data", "story-instructions", "--out", str(out), "--corpus", str(stories_file)]
    assert main(command) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {out} exists; pass --overwrite to replace it\n"
    assert captured.out == "" and out.read_text() == "keep me"
    assert main([*command, "--overwrite"]) == 0
    assert set(json.loads(out.read_text())) == {"train", "validation", "test"}
    assert sorted(path.name for path in tmp_path.iterdir()) == [  # no temporary file is left
        "stories.txt", "story-instructions.json"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1, got 1.5"),
        (["--corpus", "no-such-corpus"], "corpus 'no-such-corpus' is neither a data file"),
    ],
)
def test_story_instructions_bad_arguments(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "story-instructions.json"
    assert main(["data", "story-instructions", "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert main(["data", "story-instructions", "--out", str(tmp_path)]) == 2
    assert "it is a directory" in capsys.readouterr().err


def test_too_few_stories_for_story_instructions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "few.txt"
    corpus.write_text(stories_text(4), encoding="utf-8")
    out = tmp_path / "story-instructions.json"
    assert main(["data", "story-instructions", "--out", str(out), "--corpus", str(corpus)]) == 2
    assert "story instructions need at least 10 and 2" in capsys.readouterr().err
    assert not out.exists()
