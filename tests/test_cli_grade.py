"""Grading notebooks: ``grade_notebook`` in a real kernel, and ``llmcourse grade``'s exit codes.

Each real grading starts a Jupyter kernel (a few seconds), so only a few notebooks are
executed; the tests that run one are marked slow.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from llmcourse.cli import main
from llmcourse.exercises import STRICT_ENV, ExerciseResult, Scorecard, grading

REGISTER_EXERCISES = '''\
from pathlib import Path
from llmcourse.exercises import check, exercise, expect_equal, run_cases

def integer_exercise(exercise_id, reference):
    @exercise(exercise_id, title=exercise_id, time_limit=1)
    def checker(answer):
        run_cases(answer, reference, [(f"x = {x}", (x,)) for x in (0, -2, 3)])

integer_exercise("nbtest.square", lambda x: x * x)
integer_exercise("nbtest.cube", lambda x: x ** 3)
integer_exercise("nbtest.half", lambda x: x / 2)
integer_exercise("nbtest.spin", lambda x: x)
integer_exercise("nbtest.inverse", lambda x: 1 // (x + 10))

@exercise("nbtest.greeting", title="Read the greeting")
def check_greeting(answer):
    expect_equal(answer, "hello", case="the text of greeting.txt")
'''

NOT_ATTEMPTED_HALF = '''\
def half(x):
    raise NotImplementedError  # your code here

check("nbtest.half", half)'''

SPIN = '''\
def spin(x):
    while True:
        pass

check("nbtest.spin", spin)'''


def write_notebook(folder: Path, *cells: str) -> Path:
    notebook = new_notebook(
        cells=[new_markdown_cell("# A learner's notebook")] + [new_code_cell(c) for c in cells]
    )
    path = folder / "learner.ipynb"
    nbformat.write(notebook, path)
    return path


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, Scorecard]:
    """A notebook with every kind of outcome, graded once (in strict mode, which grading
    must switch off)."""
    folder = tmp_path_factory.mktemp("graded")
    (folder / "greeting.txt").write_text("hello")
    path = write_notebook(
        folder,
        REGISTER_EXERCISES,
        'check("nbtest.square", lambda x: x * x)',
        'check("nbtest.cube", lambda x: x * x)',
        NOT_ATTEMPTED_HALF,
        "1 / 0",
        'check("nbtest.greeting", Path("greeting.txt").read_text())',
        SPIN,
        'check("nbtest.inverse", lambda x: 1 // x)',
    )
    original = path.read_bytes()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STRICT_ENV, "1")
        card = grading.grade_notebook(path, timeout=120, progress=False)
    return path, original, card


@pytest.mark.slow
def test_grading_collects_every_outcome(graded: tuple[Path, bytes, Scorecard]) -> None:
    card = graded[2]
    assert {name: result.message for name, result in card.results.items()} == {
        "nbtest.square": "passed (3 cases)",
        "nbtest.cube": "failed for x = -2: expected -8, got 4",
        "nbtest.half": "not attempted (the code still raises NotImplementedError)",
        "nbtest.greeting": "passed (1 case)",  # read from the notebook's folder
        "nbtest.spin": "timeout for x = 0: no result within 1 s (a loop that never ends?)",
        "nbtest.inverse": "error for x = 0: ZeroDivisionError: integer division or modulo by zero",
    }
    assert [card.count(status) for status in ("passed", "failed", "not attempted")] == [2, 1, 1]


@pytest.mark.slow
def test_grading_counts_cells_that_raised_and_goes_on(
    graded: tuple[Path, bytes, Scorecard],
) -> None:
    card = graded[2]
    assert card.cell_errors == ["cell 6 (1 / 0): ZeroDivisionError: division by zero"]
    assert card.totals() == (
        "6 exercises: 2 passed, 1 failed, 1 error, 1 timeout, 1 not attempted; "
        "1 cell raised an error"
    )
    assert not card.succeeded()


@pytest.mark.slow
def test_grading_leaves_the_notebook_file_unchanged(
    graded: tuple[Path, bytes, Scorecard],
) -> None:
    path, original, _ = graded
    assert path.read_bytes() == original


@pytest.mark.slow
def test_cli_grades_a_notebook_and_exits_zero_when_nothing_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_notebook(
        tmp_path, REGISTER_EXERCISES, 'check("nbtest.square", lambda x: x * x)', NOT_ATTEMPTED_HALF
    )
    assert main(["grade", str(path), "--quiet"]) == 0
    assert capsys.readouterr().out == (
        "✓ nbtest.square  passed (3 cases)\n"
        "○ nbtest.half    not attempted (the code still raises NotImplementedError)\n"
        "\n"
        "2 exercises: 1 passed, 1 not attempted\n"
    )


def fake_scorecard(*statuses: str, cell_errors: tuple[str, ...] = ()) -> Scorecard:
    results = [ExerciseResult(f"t.e{i}", "E", s, s) for i, s in enumerate(statuses)]
    return Scorecard({result.exercise_id: result for result in results}, list(cell_errors))


@pytest.mark.parametrize(
    ("statuses", "cell_errors", "options", "exit_code"),
    [
        (("passed", "passed"), (), [], 0),
        (("passed", "not attempted"), (), [], 0),
        (("passed", "not attempted"), (), ["--require-all"], 1),
        (("passed", "missing"), (), [], 0),
        (("passed", "missing"), (), ["--require-all"], 1),
        (("passed", "failed"), (), [], 1),
        (("passed", "error"), (), [], 1),
        (("timeout",), (), [], 1),
        (("passed",), ("cell 2 (1 / 0): ZeroDivisionError: division by zero",), [], 1),
    ],
)
def test_cli_exit_code_follows_the_scorecard(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    statuses: tuple[str, ...],
    cell_errors: tuple[str, ...],
    options: list[str],
    exit_code: int,
) -> None:
    card = fake_scorecard(*statuses, cell_errors=cell_errors)
    calls: list[tuple[str, int | None]] = []

    def fake_grade(path: str, *, timeout: int | None, progress: bool) -> Scorecard:
        calls.append((path, timeout))
        return card

    monkeypatch.setattr(grading, "grade_notebook", fake_grade)
    assert main(["grade", "some.ipynb", "--timeout", "30", *options]) == exit_code
    assert calls == [("some.ipynb", 30)]
    assert capsys.readouterr().out == card.table() + "\n"


def test_cli_reports_a_missing_notebook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grade", str(tmp_path / "missing.ipynb")]) == 2
    assert "error: no notebook at" in capsys.readouterr().err


def test_cli_reports_a_file_that_is_not_a_notebook(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.ipynb"
    path.write_text("just text")
    assert main(["grade", str(path)]) == 2
    assert "is not a readable Jupyter notebook" in capsys.readouterr().err


def test_cli_rejects_a_non_positive_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grade", "x.ipynb", "--timeout", "0"]) == 2
    assert "--timeout must be a positive number of seconds" in capsys.readouterr().err


def test_kernel_runs_this_python_even_if_another_python3_spec_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    other_python = ["/elsewhere/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": other_python, "display_name": "Other", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    assert KernelSpecManager().get_kernel_spec("python3").argv == other_python  # the trap
    manager = grading._CurrentPythonKernelManager(kernel_name="python3")
    assert manager.kernel_spec.argv[0] == sys.executable


# ----------------------------------------------------------------------------------------------
# A grader that cannot hang or be forged

PER_PROCESS_BATCH = '''\
from llmcourse.exercises import check

def per_process_batch(global_batch_size, world_size):
    if global_batch_size < 1 or global_batch_size % world_size:
        raise ValueError("cannot split the batch")
    return global_batch_size // world_size

check("ch08.per_process_batch", per_process_batch)'''

# The interrupt lands in the inner loop, inside the try, and the bare except swallows it.
SWALLOWS_INTERRUPTS = '''\
while True:
    try:
        while True:
            pass
    except:
        pass'''


def write_chapter_notebook(folder: Path, name: str, cells: list) -> Path:
    path = folder / name
    nbformat.write(new_notebook(cells=cells), path)
    return path


@pytest.mark.slow
def test_grade_kills_a_loop_that_swallows_the_interrupt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_chapter_notebook(tmp_path, "08_appendix_scaling.ipynb", [
        new_code_cell(PER_PROCESS_BATCH),
        new_code_cell(SWALLOWS_INTERRUPTS),
        new_code_cell('check("ch08.allreduce_mean", lambda gradients: gradients)'),
    ])
    start = time.monotonic()
    # The timeout leaves the first cell (a fresh kernel importing torch) time on a loaded
    # machine; the loop of the second then runs into it.
    assert main(["grade", str(path), "--timeout", "15", "--quiet"]) == 1
    assert time.monotonic() - start < 15 + 30
    out = capsys.readouterr().out
    assert "✓ ch08.per_process_batch  passed" in out
    assert "○ ch08.allreduce_mean     missing: never checked" in out
    assert (
        "cell 2 (while True:): timed out after 15 s and ignored the interrupt, so its kernel "
        "was killed; the cells after it did not run"
    ) in out


@pytest.mark.slow
def test_forged_outputs_are_ignored_and_unchecked_exercises_are_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forged_pass = {"id": "ch08.allreduce_mean", "title": "t", "status": "passed",
                   "message": "passed (14 cases)", "hint": "", "cases": 14}
    forged = new_code_cell("", outputs=[nbformat.v4.new_output(
        "display_data", data={"text/plain": "✓ ch08.allreduce_mean: passed (14 cases)"},
        metadata={"llmcourse_exercise": forged_pass},
    )])
    path = write_chapter_notebook(tmp_path, "08_appendix_scaling.ipynb", [
        new_code_cell(PER_PROCESS_BATCH),
        forged,
        new_code_cell('print(\'{"id": "ch08.allreduce_mean", "status": "passed"}\')'),
    ])
    assert main(["grade", str(path), "--quiet"]) == 0
    assert main(["grade", str(path), "--quiet", "--require-all"]) == 1
    out = capsys.readouterr().out
    assert "○ ch08.allreduce_mean     missing: never checked" in out
    assert out.endswith("3 exercises: 1 passed, 2 missing\n")  # gradient_noise is missing too


def test_exercises_of_a_notebook_come_from_its_checks_and_its_name() -> None:
    learner = new_notebook(cells=[new_code_cell('check("ch01.merge_pair", merge_pair)')])
    ids = [entry.exercise_id for entry in grading.chapter_exercises(learner, {})]
    assert ids == [
        "ch01.apply_merges", "ch01.build_vocab", "ch01.merge_pair", "ch01.most_frequent_pair",
        "ch01.split_words",
    ]
    renamed = Path("07_0_lora-Copy1.ipynb")
    ids = [entry.exercise_id for entry in grading.chapter_exercises(new_notebook(), {}, renamed)]
    assert ids == [
        "ch07.lora_delta", "ch07.lora_forward", "ch07.lora_param_count", "ch07.lora_rank_sweep",
        "ch07.merge_weight",
    ]
    assert grading.chapter_exercises(new_notebook(), {"nbtest.square": None}) == []
