"""Crash-safe saving: every file and directory the course writes is complete, or recoverable.

Checkpoints, classifiers, fine-tuned models, caches, downloads, responses and scores are all
written through this module, in one of two ways.

**A file** (``atomic_file``, ``write_text_atomic``, ``write_json_atomic``, ``publish_file``) is
written to a temporary file beside it, ``.NAME.<pid>-<hex>.tmp``, flushed to disk, renamed onto
``NAME``, and the rename is flushed too: ``NAME`` holds its old content or all of the new one.
Every file gets the permissions of a new file, ``0o666`` less the umask, before it is
published, whatever its writer gave it (``mkstemp`` and safetensors give ``0o600``).

**A directory** (``staged_directory``) cannot be replaced by one rename. Its swap:

1. write every file into ``.NAME.<tag>.tmp`` (``<tag>``: the writer's process id and random
   hex digits) and flush them to disk;
2. rename it to ``.NAME.<tag>.new``: from now on a complete copy;
3. rename the existing ``NAME``, if any, to ``.NAME.<tag>.old``;
4. rename ``.new`` to ``NAME`` and flush the parent directory;
5. delete ``.old``.

A crash leaves ``NAME`` missing only between steps 3 and 4, and then ``.old`` and ``.new`` are
both complete beside it. ``recover(NAME)``, which every save and every loader calls first,
finishes such a swap: it promotes the newest ``.new`` (or, without one, restores an ``.old``),
then deletes the ``.tmp``/``.new``/``.old`` entries of writers that are no longer running (the
process id in the name tells), never those of a writer still at work. A process id that the
system has given to a new process keeps its entries until that process ends.

``check_destination`` refuses, before any work, a destination that is a file, a directory
holding files the writer did not write (a swap would delete them), and, where a command asks,
an earlier finished output that was not meant to be replaced.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from llmcourse.errors import CourseError, DestinationError

WRITING, COMPLETE, RETIRED = "tmp", "new", "old"  # the suffixes of a swap's staging entries


# ---------------------------------------------------------------------------------------------
# Files


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; the file written there replaces ``path``
    atomically when the block ends without an error, and is deleted when it raises."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    temporary = _entry(target, _new_tag(), WRITING)
    try:
        yield temporary
        publish_file(temporary, target)
    except BaseException:
        _remove(temporary)
        raise


def publish_file(source: Path, target: Path) -> None:
    """Give the complete file ``source`` the permissions of a new file, flush it to disk,
    rename it onto ``target`` (same file system) and flush the rename."""
    _finish_file(source, new_file_mode())
    os.replace(source, target)
    _sync_directory(target.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], value: object, *, indent: int = 4) -> Path:
    """Write ``value`` as indented JSON (non-ASCII characters kept) to ``path`` atomically;
    returns the path."""
    return write_text_atomic(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Directories


@contextmanager
def staged_directory(path: str | os.PathLike[str], *, keep_existing: bool = False
                     ) -> Iterator[Path]:
    """Yield an empty staging directory beside ``path``; when the block ends without an error,
    its files are flushed to disk and it replaces ``path`` by the swap of the module's
    docstring. When the block raises, the staging directory is deleted and ``path`` is as it
    was.

    ``keep_existing`` (for caches, where two processes may build the same entry): an existing
    ``path`` is kept and the staged copy is dropped."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tag = _new_tag()
    staging = _entry(target, tag, WRITING)
    staging.mkdir()
    try:
        yield staging
        _finish_tree(staging)
        complete = _entry(target, tag, COMPLETE)
        os.replace(staging, complete)
    except BaseException:
        _remove(staging)
        raise
    if keep_existing:
        _publish_unless_present(complete, target)
    else:
        _swap(complete, target, _entry(target, tag, RETIRED))


@contextmanager
def scratch_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty working directory beside ``path`` (to download or unpack into before
    ``publish_file``), deleted when the block ends; named like a staging directory, so
    ``recover(path)`` deletes it when a crash left it behind."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    scratch = _entry(target, _new_tag(), WRITING)
    scratch.mkdir()
    try:
        yield scratch
    finally:
        _remove(scratch)


def _swap(complete: Path, target: Path, retired: Path) -> None:
    """Steps 3 to 5 of the swap; a failure of step 4 puts the old ``target`` back."""
    try:
        had_target = os.path.lexists(target)
        if had_target:
            os.replace(target, retired)
        try:
            os.replace(complete, target)
        except BaseException:
            if had_target:
                os.replace(retired, target)
            raise
    except BaseException:
        _remove(complete)
        raise
    _sync_directory(target.parent)
    _remove(retired)


def _publish_unless_present(complete: Path, target: Path) -> None:
    """Rename ``complete`` to ``target`` unless another writer published ``target`` first."""
    try:
        os.replace(complete, target)  # fails when target is a directory that holds files
    except OSError:
        _remove(complete)
        if not target.is_dir():
            raise  # not the race with another writer: a real failure
        return
    _sync_directory(target.parent)


def recover(path: str | os.PathLike[str]) -> None:
    """Finish or roll back a swap of ``path`` that a crash interrupted, and delete the staging
    entries of ``path`` whose writers are no longer running (see the module's docstring).
    Does nothing (and writes nothing) when there are none."""
    target = Path(path)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)-[0-9a-f]+\.({WRITING}|"
                         rf"{COMPLETE}|{RETIRED})")
    try:
        names = os.listdir(target.parent)
    except (FileNotFoundError, NotADirectoryError):
        return
    leftovers = [
        (target.parent / name, match[2])
        for name in names
        if (match := pattern.fullmatch(name)) and not _is_running(int(match[1]))
    ]
    if not leftovers:
        return
    if not os.path.lexists(target):
        for state in (COMPLETE, RETIRED):  # finish the swap, else roll it back
            copies = [entry for entry, kind in leftovers if kind == state]
            if copies:
                try:
                    newest = max(copies, key=lambda entry: entry.stat().st_mtime_ns)
                    os.replace(newest, target)
                except OSError:
                    if not os.path.lexists(target):
                        raise  # not a second process that recovered it first
                _sync_directory(target.parent)
                break
    for entry, _ in leftovers:
        _remove(entry)


def _is_running(pid: int) -> bool:
    """Whether a process ``pid`` exists (this process' own entries count as in use)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _new_tag() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _entry(target: Path, tag: str, state: str) -> Path:
    return target.with_name(f".{target.name}.{tag}.{state}")


def _remove(path: Path) -> None:
    """Delete a file or directory tree if it exists; errors are ignored (cleanup only)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink()


def new_file_mode() -> int:
    """The permissions ``open`` gives a new file: ``0o666`` less the process' umask."""
    umask = os.umask(0o022)  # the only way to read it; set back at once
    os.umask(umask)
    return 0o666 & ~umask


def _finish_file(path: Path, mode: int) -> None:
    """Set ``mode`` (some writers, such as safetensors, create files ``0o600``) and flush the
    file to disk."""
    os.chmod(path, mode)
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _sync_directory(path: Path) -> None:
    """Flush a directory's entries (renames, new files) to disk, where the system allows it."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems cannot sync a directory; the renames still happened
    finally:
        os.close(descriptor)


def _finish_tree(root: Path) -> None:
    """``_finish_file`` every file below ``root``, then flush every directory to disk."""
    mode = new_file_mode()
    for directory, _, files in os.walk(root):
        for name in files:
            _finish_file(Path(directory, name), mode)
        _sync_directory(Path(directory))


# ---------------------------------------------------------------------------------------------
# Destinations


def check_destination(
    path: str | os.PathLike[str],
    *,
    what: str,
    own_names: Collection[str],
    marker: str | None = None,
    replace: bool = True,
    remedy: str = "pass --overwrite to replace it",
    error: type[CourseError] = DestinationError,
) -> bool:
    """Raise ``error`` unless ``path`` may receive ``what`` (such as ``"a checkpoint"``):
    a new path, an empty directory, or (when ``replace``) an earlier ``what``: a directory that
    holds only ``own_names``, ``marker`` among them when given. Returns whether ``path`` holds
    an earlier ``what``, which saving will replace. ``remedy`` says how to allow the
    replacement when ``replace`` is False (``"pass --overwrite to replace it"``)."""
    target = Path(path)
    recover(target)
    if not os.path.lexists(target):
        return False
    if not target.is_dir():
        raise error(
            f"cannot save {what} to {target}: it exists and is a file; move the file away or "
            "choose another path"
        )
    for name in own_names:  # a file write that a crash interrupted inside the directory
        recover(target / name)
    present = sorted(entry.name for entry in target.iterdir())
    if not present:
        return False
    foreign = [name for name in present if name not in own_names]
    if foreign:
        raise error(
            f"will not write {what} into {target}: it holds files that are not part of {what} "
            f"({', '.join(foreign)}); choose an empty or new directory"
        )
    if marker is not None and marker not in present:
        raise error(
            f"will not write {what} into {target}: it holds {', '.join(present)} but no "
            f"{marker}, so it is something else; choose an empty or new directory"
        )
    if not replace:
        raise error(f"{target} already holds {what}; {remedy}, or choose another --out")
    return True
