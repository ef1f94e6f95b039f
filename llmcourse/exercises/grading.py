"""Grade a learner's notebook: run it from top to bottom and collect every exercise result.

The notebook runs in a fresh kernel of the Python running this code (whatever Jupyter kernels
are installed elsewhere), with the notebook's folder as working directory, non-strict checks
(so a failed exercise does not stop the run) and every other environment variable inherited,
``LLMCOURSE_PROFILE`` included. A cell that raises does not stop the run either: it is counted,
and the following cells still run, as they do when a learner runs all cells in Jupyter.

A cell still running at the time limit is interrupted (Ctrl-C); if it is still running
``KILL_GRACE`` seconds later (a loop whose bare ``except:`` swallows the interrupt), the kernel
and its process group are killed, the cell is reported as timed out and the cells after it do
not run. Grading therefore always ends.

Results are what the checks report while they run: each ``check`` appends its result to a file
that only this run knows (``$LLMCOURSE_GRADE_RESULTS``). Nothing is read from the notebook's
outputs or metadata, which a learner can edit. The scorecard lists every exercise of the
chapters the notebook belongs to (the exercises their ``chNN_*.py`` module registers), and
marks those never checked as "missing".
"""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import nbformat
import zmq
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from tqdm.auto import tqdm
from traitlets import default

from llmcourse.errors import ExerciseError, MissingFileError, ToolError
from llmcourse.exercises.core import (
    RESULTS_FILE_ENV,
    STRICT_ENV,
    Exercise,
    ExerciseResult,
    Scorecard,
    list_exercises,
)

DEFAULT_CELL_TIMEOUT = 600  # seconds one cell may run before the kernel is interrupted
KILL_GRACE = 10  # seconds an interrupted cell may take to stop before the kernel is killed
_CHECK_CALL = re.compile(r"""check\(\s*["']([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)["']""")


class _CurrentPythonKernelManager(AsyncKernelManager):
    """Starts the ``python3`` kernel with this very interpreter, encrypted where possible.

    The kernel-spec search is limited to the one ipykernel ships, which runs ``sys.executable``:
    a user-wide ``python3`` spec that points at another Python (without llmcourse) is ignored.
    Where pyzmq supports CurveZMQ, the kernel's sockets are encrypted (and the kernel does not
    warn about plain-text TCP).
    """

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return KernelSpecManager(kernel_dirs=[])

    @default("transport_encryption")
    def _transport_encryption_default(self) -> str:
        return "auto" if zmq.has("curve") else "disabled"


class _Watchdog:
    """Interrupts the kernel's process group when a cell passes ``timeout`` seconds, and kills
    it when the cell is still running ``grace`` seconds later.

    It runs in its own thread, so it works even while the client waits on the kernel.
    """

    def __init__(self, timeout: float, grace: float):
        self.timeout, self.grace = timeout, grace
        self.killed_in_cell: int | None = None  # the index of the cell that forced a kill
        self._lock = threading.Lock()
        self._cell: int | None = None
        self._started = 0.0
        self._process_group: int | None = None
        self._interrupted = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="grade-watchdog", daemon=True)

    def cell_started(self, cell_index: int, process_group: int | None) -> None:
        with self._lock:
            self._cell, self._started = cell_index, time.monotonic()
            self._process_group, self._interrupted = process_group, False

    def cell_finished(self) -> None:
        with self._lock:
            self._cell = None

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                if self._cell is None or self._process_group is None:
                    continue
                elapsed = time.monotonic() - self._started
                if elapsed >= self.timeout + self.grace:
                    self.killed_in_cell, self._cell = self._cell, None
                    _signal_group(self._process_group, signal.SIGKILL)
                elif elapsed >= self.timeout and not self._interrupted:
                    self._interrupted = True
                    _signal_group(self._process_group, signal.SIGINT)


def _signal_group(process_group: int, signal_number: int) -> None:
    try:
        os.killpg(process_group, signal_number)
    except ProcessLookupError:  # the kernel ended on its own meanwhile
        pass


def grade_notebook(
    path: str | Path,
    *,
    timeout: int | None = None,
    progress: bool = True,
    kill_grace: float = KILL_GRACE,
) -> Scorecard:
    """Execute the notebook at ``path`` and return its scorecard.

    ``timeout`` is in seconds per cell (``None``: ``DEFAULT_CELL_TIMEOUT``): a cell still
    running then is interrupted and counts as a cell that raised; one still running
    ``kill_grace`` seconds later has its kernel killed (see the module's docstring). The
    notebook file itself is not changed. ``progress`` shows a progress bar over the code cells.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no notebook at {path}: give the path of an .ipynb file")
    try:
        notebook = nbformat.read(path, as_version=4)
    except Exception as error:  # nbformat raises several unrelated types for a broken file
        raise ExerciseError(f"{path} is not a readable Jupyter notebook: {error}") from error
    timeout = DEFAULT_CELL_TIMEOUT if timeout is None else timeout
    code_cells = sum(cell.cell_type == "code" for cell in notebook.cells)
    bar = tqdm(total=code_cells, desc=f"grading {path.name}", unit="cell", disable=not progress)
    with tempfile.TemporaryDirectory(prefix="llmcourse-grade-") as folder, bar:
        results_file = Path(folder) / "results.jsonl"
        results_file.touch()
        with _Watchdog(timeout, kill_grace) as watchdog:
            client = NotebookClient(
                notebook,
                timeout=None,  # the watchdog enforces the time limit, kill included
                kernel_name="python3",
                kernel_manager_class=_CurrentPythonKernelManager,
                allow_errors=True,
                resources={"metadata": {"path": str(path.resolve().parent)}},
            )
            client.on_cell_execute = lambda cell_index, **_: watchdog.cell_started(
                cell_index, client.km.provisioner.pgid
            )

            def on_cell_executed(**_: object) -> None:
                watchdog.cell_finished()
                bar.update()

            client.on_cell_executed = on_cell_executed
            environment = {**os.environ, STRICT_ENV: "0", RESULTS_FILE_ENV: str(results_file)}
            try:
                client.execute(env=environment)
            except NoSuchKernel as error:
                raise ToolError(
                    "cannot start a Python kernel: install ipykernel into this environment "
                    "(pip install ipykernel)"
                ) from error
            except DeadKernelError as error:
                if watchdog.killed_in_cell is None:
                    raise ExerciseError(
                        f"the kernel died while running {path} (out of memory?); results so "
                        f"far:\n{collect_results(notebook, results_file, path).table()}"
                    ) from error
        card = collect_results(notebook, results_file, path)
    if watchdog.killed_in_cell is not None:
        cell = notebook.cells[watchdog.killed_in_cell]
        card.cell_errors.append(
            f"cell {watchdog.killed_in_cell + 1} ({_first_line(cell.source)}): timed out after "
            f"{timeout} s and ignored the interrupt, so its kernel was killed; the cells after "
            "it did not run"
        )
    return card


def collect_results(
    notebook: nbformat.NotebookNode, results_file: Path, path: Path | None = None
) -> Scorecard:
    """The scorecard of a run: the results the checks appended to ``results_file``, then every
    other exercise of the notebook's chapters as "missing", and the cells that raised (from
    the executed notebook's error outputs)."""
    card = Scorecard()
    for line in results_file.read_text(encoding="utf-8").splitlines():
        card.record(ExerciseResult.from_record(json.loads(line)))
    for entry in chapter_exercises(notebook, card.results, path):
        if entry.exercise_id not in card.results:
            card.record(ExerciseResult(
                entry.exercise_id, entry.title, "missing",
                "missing: never checked (its check cell was deleted or did not run)",
            ))
    for number, cell in enumerate(notebook.cells, start=1):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.output_type == "error":
                card.cell_errors.append(
                    f"cell {number} ({_first_line(cell.source)}): {_error_text(output)}"
                )
    return card


def chapter_exercises(
    notebook: nbformat.NotebookNode, checked: Iterable[str], path: Path | None = None
) -> list[Exercise]:
    """The registered exercises of every chapter module the notebook belongs to.

    A module belongs to it when it registered an exercise that was ``checked`` or that a
    ``check("id", ...)`` call in a code cell names, or when the notebook's file name holds the
    module's chapter number and topic ("07_0_lora.ipynb" and ``ch07_lora``).
    """
    exercises = list_exercises()
    named = set(checked) | {
        exercise_id
        for cell in notebook.cells if cell.cell_type == "code"
        for exercise_id in _CHECK_CALL.findall(cell.source)
    }
    modules = {entry.module for entry in exercises if entry.exercise_id in named}
    if path is not None:
        modules |= {entry.module for entry in exercises if _named_after(path, entry.module)}
    return [entry for entry in exercises if entry.module in modules]


def _named_after(path: Path, module: str) -> bool:
    """Whether the notebook's name starts with the module's chapter number and holds its
    topic: ``01_tokenization_solutions.ipynb`` and ``llmcourse.exercises.ch01_tokenization``."""
    match = re.fullmatch(r"ch(\d\d)_(\w+)", module.rsplit(".", 1)[-1])
    return match is not None and path.stem.startswith(match[1]) and match[2] in path.stem


def _error_text(output: nbformat.NotebookNode) -> str:
    if output.ename == "KeyboardInterrupt":  # how the kernel stops a cell at the time limit
        return "KeyboardInterrupt (interrupted: still running at the time limit?)"
    return f"{output.ename}: {output.evalue}"


def _first_line(source: str) -> str:
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= 60 else first[:57] + "..."
