"""Grade a learner's notebook: run it from top to bottom and collect every exercise result.

The notebook runs in a fresh kernel of the Python running this code (whatever Jupyter kernels
are installed elsewhere), with the notebook's folder as working directory, non-strict checks
(so a failed exercise does not stop the run) and every other environment variable inherited,
``LLMCOURSE_PROFILE`` included. A cell that raises does not stop the run either: it is counted,
and the following cells still run, as they do when a learner runs all cells in Jupyter.

Results are read back from the executed notebook: each ``check`` leaves its result as a JSON
object in the display metadata of its output (``RESULT_METADATA_KEY``).
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import zmq
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from tqdm.auto import tqdm
from traitlets import default

from llmcourse.errors import CourseError
from llmcourse.exercises.core import RESULT_METADATA_KEY, STRICT_ENV, ExerciseResult, Scorecard

DEFAULT_CELL_TIMEOUT = 600  # seconds one cell may run before the kernel is interrupted


class NotebookNotFound(CourseError, FileNotFoundError):
    """The notebook to grade does not exist."""


class GradingError(CourseError, RuntimeError):
    """The notebook could not be read or run to the end."""


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


def grade_notebook(
    path: str | Path, *, timeout: int | None = None, progress: bool = True
) -> Scorecard:
    """Execute the notebook at ``path`` and return its scorecard.

    ``timeout`` is in seconds per cell (``None``: ``DEFAULT_CELL_TIMEOUT``): a cell still
    running then is interrupted and counts as a cell that raised. The notebook file itself is
    not changed. ``progress`` shows a progress bar over the code cells.
    """
    path = Path(path)
    if not path.is_file():
        raise NotebookNotFound(f"no notebook at {path}: give the path of an .ipynb file")
    try:
        notebook = nbformat.read(path, as_version=4)
    except Exception as error:  # nbformat raises several unrelated types for a broken file
        raise GradingError(f"{path} is not a readable Jupyter notebook: {error}") from error
    code_cells = sum(cell.cell_type == "code" for cell in notebook.cells)
    bar = tqdm(total=code_cells, desc=f"grading {path.name}", unit="cell", disable=not progress)
    with bar:
        client = NotebookClient(
            notebook,
            timeout=DEFAULT_CELL_TIMEOUT if timeout is None else timeout,
            kernel_name="python3",
            kernel_manager_class=_CurrentPythonKernelManager,
            allow_errors=True,
            interrupt_on_timeout=True,
            resources={"metadata": {"path": str(path.resolve().parent)}},
            on_cell_executed=lambda **_: bar.update(),
        )
        try:
            client.execute(env={**os.environ, STRICT_ENV: "0"})
        except NoSuchKernel as error:
            raise GradingError(
                "cannot start a Python kernel: install ipykernel into this environment "
                "(pip install ipykernel)"
            ) from error
        except DeadKernelError as error:
            raise GradingError(
                f"the kernel died while running {path} (out of memory?); results so far:\n"
                f"{collect_results(notebook).table()}"
            ) from error
    return collect_results(notebook)


def collect_results(notebook: nbformat.NotebookNode) -> Scorecard:
    """The exercise results and cell errors in an executed notebook's outputs."""
    card = Scorecard()
    for number, cell in enumerate(notebook.cells, start=1):
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get(RESULT_METADATA_KEY)
            if record is not None:
                card.record(ExerciseResult.from_record(record))
            if output.output_type == "error":
                card.cell_errors.append(
                    f"cell {number} ({_first_line(cell.source)}): {_error_text(output)}"
                )
    return card


def _error_text(output: nbformat.NotebookNode) -> str:
    if output.ename == "KeyboardInterrupt":  # how the kernel stops a cell at the time limit
        return "KeyboardInterrupt (interrupted: still running at the time limit?)"
    return f"{output.ename}: {output.evalue}"


def _first_line(source: str) -> str:
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= 60 else first[:57] + "..."
