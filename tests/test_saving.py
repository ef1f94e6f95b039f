"""The saving layer: atomic files, the staged directory swap, recovery, destination checks."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from llmcourse.errors import DestinationError
from llmcourse.saving import (
    atomic_file,
    check_destination,
    recover,
    staged_directory,
    write_json_atomic,
    write_text_atomic,
)


def dead_pid() -> int:
    """The id of a process that has ended (and was reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


def make_dir(path: Path, **files: str) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def contents(path: Path) -> dict[str, str]:
    return {entry.name: entry.read_text() for entry in sorted(path.iterdir())}


def test_files_follow_the_umask_and_leave_no_temporary_file(tmp_path: Path) -> None:
    old_umask = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "a.txt", "one")
        with atomic_file(tmp_path / "private.bin") as temporary:
            temporary.write_bytes(b"x")
            temporary.chmod(0o600)  # as safetensors creates its files
        with staged_directory(tmp_path / "run") as staging:
            (staging / "w.bin").write_bytes(b"x")
            (staging / "private.bin").write_bytes(b"x")
            (staging / "private.bin").chmod(0o600)
    finally:
        os.umask(old_umask)
    for path in ("a.txt", "private.bin", "run/w.bin", "run/private.bin"):
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == 0o640, path
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o750
    write_json_atomic(tmp_path / "a.txt", {"é": [1]})
    written = (tmp_path / "a.txt").read_text(encoding="utf-8")
    assert written == '{\n    "é": [\n        1\n    ]\n}\n'
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "private.bin", "run"]


def test_a_staged_directory_replaces_the_old_one_whole(tmp_path: Path) -> None:
    make_dir(tmp_path / "run", **{"old.txt": "old", "same.txt": "1"})
    with staged_directory(tmp_path / "run") as staging:
        (staging / "same.txt").write_text("2")
    assert contents(tmp_path / "run") == {"same.txt": "2"}
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_an_error_while_staging_keeps_the_old_directory(tmp_path: Path) -> None:
    make_dir(tmp_path / "run", **{"a.txt": "old"})
    with pytest.raises(OSError, match="disk full"), staged_directory(tmp_path / "run") as staging:
        (staging / "a.txt").write_text("new")
        raise OSError("disk full")
    assert contents(tmp_path / "run") == {"a.txt": "old"}
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_keep_existing_drops_the_second_copy(tmp_path: Path) -> None:
    make_dir(tmp_path / "cache", **{"a.txt": "first"})
    with staged_directory(tmp_path / "cache", keep_existing=True) as staging:
        (staging / "a.txt").write_text("second")
    assert contents(tmp_path / "cache") == {"a.txt": "first"}
    assert sorted(os.listdir(tmp_path)) == ["cache"]


def test_recovery_finishes_a_swap_killed_between_its_renames(tmp_path: Path) -> None:
    pid = dead_pid()
    make_dir(tmp_path / f".run.{pid}-ab12.old", **{"a.txt": "old"})
    make_dir(tmp_path / f".run.{pid}-ab12.new", **{"a.txt": "new"})
    make_dir(tmp_path / f".run.{pid}-cd34.tmp", **{"a.txt": "half"})
    recover(tmp_path / "run")
    assert contents(tmp_path / "run") == {"a.txt": "new"}
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_recovery_restores_the_old_copy_when_there_is_no_complete_new_one(tmp_path: Path) -> None:
    pid = dead_pid()
    make_dir(tmp_path / f".run.{pid}-ab12.old", **{"a.txt": "old"})
    recover(tmp_path / "run")
    assert contents(tmp_path / "run") == {"a.txt": "old"}


def test_recovery_rolls_back_a_complete_copy_that_was_not_swapped_in(tmp_path: Path) -> None:
    pid = dead_pid()
    make_dir(tmp_path / "run", **{"a.txt": "old"})
    make_dir(tmp_path / f".run.{pid}-ab12.new", **{"a.txt": "new"})
    (tmp_path / f".run.txt.{pid}-ab12.tmp").write_text("another name's entry")
    recover(tmp_path / "run")
    assert contents(tmp_path / "run") == {"a.txt": "old"}
    assert sorted(os.listdir(tmp_path)) == [f".run.txt.{pid}-ab12.tmp", "run"]


def test_recovery_leaves_a_running_writer_alone(tmp_path: Path) -> None:
    running = make_dir(tmp_path / f".run.{os.getppid()}-ab12.tmp", **{"a.txt": "half"})
    recover(tmp_path / "run")
    assert running.is_dir() and not (tmp_path / "run").exists()


def test_a_later_save_cleans_up_a_killed_writers_staging(tmp_path: Path) -> None:
    pid = dead_pid()
    make_dir(tmp_path / f".run.{pid}-ab12.tmp", **{"a.txt": "half"})
    (tmp_path / f".note.txt.{pid}-ab12.tmp").write_text("half")
    write_text_atomic(tmp_path / "note.txt", "whole")
    with staged_directory(tmp_path / "run") as staging:
        (staging / "a.txt").write_text("whole")
    assert sorted(os.listdir(tmp_path)) == ["note.txt", "run"]


def test_destination_checks(tmp_path: Path) -> None:
    own = {"own_names": ("config.json", "model.safetensors"), "what": "a checkpoint"}
    assert check_destination(tmp_path / "new", **own) is False
    assert check_destination(make_dir(tmp_path / "empty"), replace=False, **own) is False
    (tmp_path / "file").write_text("x")
    with pytest.raises(DestinationError, match="to .*file: it exists and is a file"):
        check_destination(tmp_path / "file", **own)
    make_dir(tmp_path / "mixed", **{"config.json": "{}", ".git": "", "notes.txt": ""})
    with pytest.raises(DestinationError, match=r"not part of a checkpoint \(\.git, notes\.txt\)"):
        check_destination(tmp_path / "mixed", **own)
    earlier = make_dir(tmp_path / "earlier", **{"config.json": "{}"})
    assert check_destination(earlier, **own) is True
    with pytest.raises(DestinationError, match="already holds a checkpoint; pass --overwrite "
                       "to replace it, or choose another --out"):
        check_destination(earlier, replace=False, **own)
    with pytest.raises(DestinationError, match="holds config.json but no marker.json"):
        check_destination(earlier, marker="marker.json", **own)

