"""The exercise engine: outcomes of ``check``, strict mode, time limits, comparison messages."""

from __future__ import annotations

import functools
import json
import signal
import threading
import time

import pytest
import torch

from llmcourse.errors import CourseError, ExerciseError
from llmcourse.exercises import (
    RESULTS_FILE_ENV,
    STRICT_ENV,
    Case,
    ExerciseResult,
    Mismatch,
    Mistake,
    check,
    core,
    exercise,
    expect_close,
    expect_equal,
    get_exercise,
    list_exercises,
    reset_scorecard,
    run_cases,
    scorecard,
)

SQUARE_CASES = [("x = 0", (0,)), ("x = -3", (-3,)), ("x = 4", 4)]


def square_reference(x: int) -> int:
    return x * x


def divide_by_input(x: int) -> int:
    return 12 // x


def not_attempted(x: int) -> int:
    raise NotImplementedError


def spin_forever(x: int) -> int:
    while True:
        pass


@pytest.fixture(autouse=True)
def isolated_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own registry and scorecard, and non-strict checks by default."""
    list_exercises()  # import the chapter checkers into the real registry before copying it
    monkeypatch.setattr(core, "_REGISTRY", dict(core._REGISTRY))
    monkeypatch.setattr(core, "_SCORECARD", core.Scorecard())
    monkeypatch.delenv(STRICT_ENV, raising=False)


@pytest.fixture
def square() -> str:
    @exercise("test.square", title="Square a number", hint="multiply x by itself", time_limit=5)
    def check_square(answer):
        run_cases(answer, square_reference, SQUARE_CASES)

    return "test.square"


@pytest.fixture
def softmax() -> str:
    rows = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])

    @exercise("test.softmax", title="Softmax over the last dimension")
    def check_softmax(answer):
        run_cases(
            answer, lambda x: torch.softmax(x, dim=-1), [("x of shape (2, 3)", (rows,))],
            compare=functools.partial(expect_close, atol=1e-6, rtol=1e-5),
            hint="normalise each row",
        )

    return "test.softmax"


# ----------------------------------------------------------------------------------------------
# Outcomes of check


def test_correct_answer_passes(square: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = check(square, lambda x: x * x)
    assert (result.status, result.cases, result.message) == ("passed", 3, "passed (3 cases)")
    assert result.passed and result.hint == ""
    assert capsys.readouterr().out == "✓ test.square: passed (3 cases)\n"


def test_wrong_answer_fails_naming_the_input(square: str) -> None:
    result = check(square, lambda x: x * abs(x))
    assert result.status == "failed"
    assert result.message == "failed for x = -3: expected 9, got -9"
    assert result.hint == "multiply x by itself"
    assert result.summary == (
        "✗ test.square: failed for x = -3: expected 9, got -9. Hint: multiply x by itself"
    )
    assert result.cases == 2  # it stopped at the second case


@pytest.mark.parametrize("answer", [not_attempted, None, ...])
def test_unattempted_answer_is_reported_without_raising(square: str, answer: object) -> None:
    result = check(square, answer)
    assert result.status == "not attempted"
    assert result.message.startswith("not attempted (")
    assert result.summary.startswith("○ test.square: not attempted")


def test_exception_is_reported_with_the_input_and_a_traceback(square: str) -> None:
    result = check(square, divide_by_input)
    assert result.status == "error"
    assert result.message == (
        "error for x = 0: ZeroDivisionError: integer division or modulo by zero"
    )
    assert isinstance(result.exception, ZeroDivisionError)
    assert "in divide_by_input" in result.details and "return 12 // x" in result.details
    assert "exercises/core.py" not in result.details


def test_value_that_is_not_a_function_fails(square: str) -> None:
    result = check(square, 5)
    assert result.message == "failed for x = 0: expected a function to call, got int 5"


def test_endless_loop_times_out_and_restores_the_alarm(square: str) -> None:
    handler_before = signal.getsignal(signal.SIGALRM)
    start = time.perf_counter()
    result = check(square, spin_forever, time_limit=0.3)
    assert time.perf_counter() - start < 2.0
    assert result.status == "timeout"
    assert result.message == "timeout for x = 0: no result within 0.3 s (a loop that never ends?)"
    assert signal.getsignal(signal.SIGALRM) is handler_before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    with pytest.raises(ValueError, match="time_limit must be a positive number"):
        check(square, spin_forever, time_limit=0)


def test_time_limit_of_the_exercise_applies_by_default() -> None:
    @exercise("test.slow", title="Slow", time_limit=0.2)
    def check_slow(answer):
        run_cases(answer, lambda x: x, [Case((1,))])

    start = time.perf_counter()
    assert check("test.slow", spin_forever).status == "timeout"
    assert time.perf_counter() - start < 2.0
    assert check("test.slow", lambda x: x).status == "passed"


def test_check_from_another_thread_uses_a_worker_thread(square: str) -> None:
    results: list[ExerciseResult] = []

    def run_checks() -> None:
        results.append(check(square, lambda x: time.sleep(3), time_limit=0.2))
        results.append(check(square, lambda x: x * x))

    start = time.perf_counter()
    caller = threading.Thread(target=run_checks)
    caller.start()
    caller.join()
    assert time.perf_counter() - start < 2.0
    assert [result.status for result in results] == ["timeout", "passed"]


# ----------------------------------------------------------------------------------------------
# Strict mode


@pytest.mark.parametrize(
    "answer", [lambda x: x + 1, not_attempted, divide_by_input, spin_forever]
)
def test_strict_check_raises_for_anything_but_passed(square: str, answer: object) -> None:
    with pytest.raises(ExerciseError) as caught:
        check(square, answer, strict=True, time_limit=0.3)
    assert str(caught.value) == scorecard().results[square].summary
    assert isinstance(caught.value, AssertionError)


def test_strict_error_keeps_the_learners_exception_as_cause(square: str) -> None:
    with pytest.raises(ExerciseError) as caught:
        check(square, divide_by_input, strict=True)
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_environment_variable_makes_checks_strict(
    square: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STRICT_ENV, "1")
    assert check(square, square_reference).passed
    with pytest.raises(ExerciseError, match="not attempted"):
        check(square, not_attempted)
    assert check(square, not_attempted, strict=False).status == "not attempted"


def test_unreadable_strict_setting_is_an_error(
    square: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STRICT_ENV, "maybe")
    with pytest.raises(CourseError, match="LLMCOURSE_STRICT_EXERCISES='maybe'"):
        check(square, square_reference)


# ----------------------------------------------------------------------------------------------
# Tensor comparisons


def test_tensor_exercise_accepts_the_reference_and_rejects_the_wrong_dimension(
    softmax: str,
) -> None:
    assert check(softmax, lambda x: x.exp() / x.exp().sum(-1, keepdim=True)).passed
    result = check(softmax, lambda x: torch.softmax(x, dim=0))
    assert result.status == "failed"
    assert result.message.startswith(
        "failed for x of shape (2, 3): 6 of 6 values differ; at index (0, 0) expected 0.0900306"
    )
    assert result.hint == "normalise each row"


def test_expect_close_reports_a_wrong_shape() -> None:
    with pytest.raises(Mismatch) as caught:
        expect_close(torch.zeros(2, 3), torch.zeros(3, 2), case="a 3x2 input")
    assert str(caught.value) == "for a 3x2 input: got shape (2, 3) but expected (3, 2)"


def test_expect_close_reports_a_wrong_dtype_and_a_non_tensor() -> None:
    with pytest.raises(Mismatch, match=r"got a tensor of dtype torch.int64 but expected "
                       r"torch.float32$"):
        expect_close(torch.zeros(2, dtype=torch.long), torch.zeros(2), case="c")
    with pytest.raises(Mismatch, match=r"expected a tensor, got list \[1.0, 2.0\]"):
        expect_close([1.0, 2.0], torch.tensor([1.0, 2.0]), case="c")


def test_expect_close_names_the_first_value_outside_the_tolerance() -> None:
    expected = torch.arange(6.0).reshape(2, 3)
    got = expected.clone()
    got[1, 2] = 5.5
    got[0, 1] += 1e-6  # within atol
    with pytest.raises(Mismatch) as caught:
        expect_close(got, expected, atol=1e-5, rtol=0.0, case="c")
    assert caught.value.detail == (
        "1 of 6 values differ; at index (1, 2) expected 5, got 5.5 (tolerance: atol=1e-05, rtol=0)"
    )


def test_expect_close_tolerance_is_atol_plus_rtol_times_expected() -> None:
    expected = torch.tensor([100.0, float("nan")], dtype=torch.float64)
    expect_close(expected + torch.tensor([0.0109, 0.0]), expected, atol=1e-3, rtol=1e-4, case="c")
    with pytest.raises(Mismatch, match="at index \\(0,\\)"):
        expect_close(expected + torch.tensor([0.0111, 0.0]), expected, atol=1e-3, rtol=1e-4,
                     case="c")


@pytest.mark.parametrize(
    ("got_dtype", "expected_dtype"),
    [(torch.float64, torch.float32), (torch.float32, torch.float64),
     (torch.int32, torch.int64), (torch.int64, torch.int32), (torch.uint8, torch.bool)],
)
def test_expect_close_and_expect_equal_compare_the_exact_dtype(
    got_dtype: torch.dtype, expected_dtype: torch.dtype
) -> None:
    values = [0, 1]
    expected = torch.tensor(values, dtype=expected_dtype)
    message = f"got a tensor of dtype {got_dtype} but expected {expected_dtype}"
    for compare in (expect_close, expect_equal):
        with pytest.raises(Mismatch, match=message):
            compare(torch.tensor(values, dtype=got_dtype), expected, case="c")
    expect_close(torch.tensor(values, dtype=expected_dtype), expected, case="c")


def test_expect_equal_on_tensors_is_exact() -> None:
    expect_equal(torch.tensor([1, 2]), torch.tensor([1, 2]), case="c")
    with pytest.raises(Mismatch, match="at index \\(1,\\) expected 50256, got 50255$"):
        expect_equal(torch.tensor([1, 50255]), torch.tensor([1, 50256]), case="c")


# ----------------------------------------------------------------------------------------------
# Other comparisons and run_cases


def test_expect_equal_names_the_first_differing_item() -> None:
    with pytest.raises(Mismatch) as caught:
        expect_equal(["Hello", ",", "world"], ["Hello", ",", " world"], case="'Hello, world'")
    assert caught.value.detail == (
        "item 2: expected ' world', got 'world'; "
        "expected ['Hello', ',', ' world'], got ['Hello', ',', 'world']"
    )


def test_expect_equal_reports_length_type_and_key_differences() -> None:
    with pytest.raises(Mismatch, match="^for c: got 1 items but expected 2;"):
        expect_equal([1], [1, 2], case="c")
    with pytest.raises(
        Mismatch, match=r"^for c: expected list \[1, 2\], got tuple \(1, 2\)$"
    ):
        expect_equal((1, 2), [1, 2], case="c")
    with pytest.raises(Mismatch, match=r"^for c: at key 'b': expected 2, got 3; expected"):
        expect_equal({"a": 1, "b": 3}, {"a": 1, "b": 2}, case="c")
    with pytest.raises(Mismatch, match=r"^for c: missing keys \['b'\], unexpected keys \['c'\];"):
        expect_equal({"a": 1, "c": 2}, {"a": 1, "b": 2}, case="c")


def test_run_cases_gives_each_call_its_own_copy_of_the_arguments() -> None:
    def sorted_copy(values: list[int]) -> list[int]:
        values = list(values)
        values.sort()
        return values

    cases = [("[3, 1, 2]", ([3, 1, 2],))]
    run_cases(sorted_copy, sorted, cases)
    assert cases == [("[3, 1, 2]", ([3, 1, 2],))]


# ----------------------------------------------------------------------------------------------
# What run_cases rejects, and the hints it gives


def add_one(x: torch.Tensor) -> torch.Tensor:
    return x + 1


def add_one_in_place(x: torch.Tensor) -> torch.Tensor:
    x += 1
    return x


def pad(rows: list[list[int]], length: int) -> list[list[int]]:
    return [row + [0] * (length - len(row)) for row in rows]


def pad_in_place(rows: list[list[int]], length: int) -> list[list[int]]:
    for row in rows:
        row.extend([0] * (length - len(row)))
    return rows


def failure(reference, answer, cases, **options) -> Mismatch:
    with pytest.raises(Mismatch) as caught:
        run_cases(answer, reference, cases, **options)
    return caught.value


def test_an_argument_changed_in_place_fails_naming_it() -> None:
    tensor_case = [Case((torch.tensor([1, 2]),))]
    run_cases(add_one, add_one, tensor_case)
    mismatch = failure(add_one, add_one_in_place, tensor_case)
    assert mismatch.hint == "your function changed its argument `x` in place; work on a copy"
    assert mismatch.detail == (
        "the argument `x` was tensor([1, 2], dtype=torch.int64) before the call and "
        "tensor([2, 3], dtype=torch.int64) after it"
    )
    list_case = [Case(([[1], [2, 3]], 3))]
    run_cases(pad, pad, list_case)
    mismatch = failure(pad, pad_in_place, list_case)
    assert mismatch.hint == "your function changed its argument `rows` in place; work on a copy"
    assert mismatch.case == "rows = [[1], [2, 3]], length = 3"


def test_an_argument_named_in_may_change_may_change() -> None:
    run_cases(pad_in_place, pad, [Case(([[1], [2, 3]], 3))], may_change=["rows"])


def test_a_module_argument_changed_in_place_fails() -> None:
    def forward(layer: torch.nn.Linear) -> torch.Tensor:
        return layer.weight.sum().detach()

    def forward_and_zero(layer: torch.nn.Linear) -> torch.Tensor:
        total = layer.weight.sum().detach()
        with torch.no_grad():
            layer.weight.zero_()
        return total

    torch.manual_seed(0)
    case = [("a Linear(2, 2)", (torch.nn.Linear(2, 2),))]
    run_cases(forward, forward, case)
    assert failure(forward, forward_and_zero, case).hint.startswith(
        "your function changed its argument `layer` in place"
    )


@pytest.mark.parametrize(
    ("got", "expected", "detail"),
    [
        ([[1.0]], [[1]],
         "item 0: item 0: expected int 1, got float 1.0; expected [[1]], got [[1.0]]"),
        ([True, 0], [1, 0],
         "item 0: expected int 1, got bool True; expected [1, 0], got [True, 0]"),
        ({"a": (1, 2.0)}, {"a": (1, 2)}, "at key 'a': item 1: expected int 2, got float 2.0; "
         "expected {'a': (1, 2)}, got {'a': (1, 2.0)}"),
        ([torch.tensor([1], dtype=torch.int32)], [torch.tensor([1])],
         "item 0: got a tensor of dtype torch.int32 but expected torch.int64; expected "
         "[tensor([1])], got [tensor([1], dtype=torch.int32)]"),
    ],
)
def test_nested_containers_are_compared_element_by_element_with_types(
    got: object, expected: object, detail: str
) -> None:
    with pytest.raises(Mismatch) as caught:
        expect_equal(got, expected, case="c")
    assert caught.value.detail == detail
    expect_equal(expected, expected, case="c")


def test_a_missing_return_gets_its_own_hint() -> None:
    def forgets_return(x: int) -> int:
        x * x  # noqa: B018 (the mistake under test)

    mismatch = failure(square_reference, forgets_return, [Case((3,))], hint="square it")
    assert mismatch.hint == "did you forget `return`?"
    assert mismatch.detail == "returned None but expected 9"


def test_an_error_gets_the_case_hint_or_the_exercise_hint(square: str) -> None:
    result = check(square, divide_by_input)
    assert (result.status, result.hint) == ("error", "multiply x by itself")

    @exercise("test.halve", title="Halve", hint="the exercise's hint")
    def check_halve(answer):
        run_cases(answer, lambda x: x // 2, [Case((4,), hint="this case's hint")])

    result = check("test.halve", lambda x: x.missing)
    assert (result.status, result.hint) == ("error", "this case's hint")


def test_a_reference_that_raises_asks_for_the_same_builtin_exception() -> None:
    class NegativeError(CourseError, ValueError):
        pass

    def root(x: int) -> int:
        if x < 0:
            raise NegativeError(f"x must be >= 0, got {x}")
        return int(x**0.5)

    def checks_with_value_error(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return int(x**0.5)

    cases = [Case((4,)), Case((-1,), hint="refuse negative numbers")]
    run_cases(checks_with_value_error, root, cases)
    mismatch = failure(root, lambda x: int(abs(x) ** 0.5), cases)
    assert (mismatch.hint, mismatch.detail) == (
        "refuse negative numbers",
        "expected a ValueError (x must be >= 0, got -1), but it returned 1",
    )
    mismatch = failure(root, lambda x: [][x], [Case((-1,))])
    assert mismatch.detail == (
        "expected a ValueError (x must be >= 0, got -1), but it raised IndexError: "
        "list index out of range"
    )


def test_a_recognised_mistake_gives_its_hint_before_the_case_hint() -> None:
    mistakes = [
        Mistake("cube", lambda x: x**3, "square, do not cube"),
        Mistake("double", lambda x: 2 * x, "multiply x by x, not by 2"),
    ]
    cases = [Case((3,), hint="the case's hint")]
    assert failure(square_reference, lambda x: x + x, cases, mistakes=mistakes).hint == (
        "multiply x by x, not by 2"
    )
    assert failure(square_reference, lambda x: x - 1, cases, mistakes=mistakes).hint == (
        "the case's hint"
    )


def test_case_descriptions_are_generated_from_the_reference_parameters() -> None:
    mismatch = failure(pad, lambda rows, length: rows, [Case(([[1]], 2))])
    assert mismatch.case == "rows = [[1]], length = 2"
    assert failure(pad, lambda rows, length: rows, [("one row", ([[1]], 2))]).case == "one row"


def test_check_appends_its_result_for_a_grader(
    square: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv(RESULTS_FILE_ENV, str(results))
    check(square, square_reference)
    check(square, not_attempted)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(record["id"], record["status"]) for record in records] == [
        ("test.square", "passed"), ("test.square", "not attempted"),
    ]


def test_unknown_id_suggests_close_ids(square: str) -> None:
    with pytest.raises(ExerciseError, match="did you mean 'test.square'") as caught:
        check("test.sqare", square_reference)
    assert isinstance(caught.value, CourseError) and isinstance(caught.value, AssertionError)


# ----------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_by_chapter_and_rejects_bad_ids() -> None:
    @exercise("ch99.first", title="First")
    def check_first(answer):
        pass

    @exercise("ch98.other", title="Other")
    def check_other(answer):
        pass

    assert [entry.exercise_id for entry in list_exercises(99)] == ["ch99.first"]
    assert [entry.exercise_id for entry in list_exercises("ch98")] == ["ch98.other"]
    assert get_exercise("ch99.first").chapter == "ch99"
    with pytest.raises(ValueError, match="must look like 'chapter.name'"):
        exercise("Chapter 1: words", title="x")
    with pytest.raises(ValueError, match="time_limit must be a positive"):
        exercise("ch99.second", title="x", time_limit=0)


def test_an_id_cannot_be_taken_by_another_checker(square: str) -> None:
    checker = get_exercise(square).checker
    exercise(square, title="Square again")(checker)  # the same function: a re-run cell
    assert get_exercise(square).title == "Square again"

    with pytest.raises(ValueError, match="already checked by"):

        @exercise(square, title="Another")
        def another_checker(answer):
            pass


# ----------------------------------------------------------------------------------------------
# Scorecard and display


def test_scorecard_keeps_the_latest_result_per_exercise(square: str, softmax: str) -> None:
    check(square, not_attempted)
    check(softmax, lambda x: x)
    check(square, square_reference)
    card = scorecard()
    assert {name: result.status for name, result in card.results.items()} == {
        square: "passed", softmax: "failed"
    }
    assert card.totals() == "2 exercises: 1 passed, 1 failed"
    assert not card.succeeded()
    assert card.table().splitlines()[0] == "✓ test.square   passed (3 cases)"
    reset_scorecard()
    assert scorecard().results == {}


def test_scorecard_success_rules() -> None:
    def card(*statuses: str, cell_errors: tuple[str, ...] = ()) -> core.Scorecard:
        results = {
            f"t.e{i}": ExerciseResult(f"t.e{i}", "E", status, status)
            for i, status in enumerate(statuses)
        }
        return core.Scorecard(results, list(cell_errors))

    assert card("passed", "not attempted").succeeded()
    assert not card("passed", "not attempted").succeeded(require_all=True)
    for failing in ("failed", "error", "timeout"):
        assert not card("passed", failing).succeeded()
    assert not card("passed", cell_errors=("cell 3 (1 / 0): ZeroDivisionError",)).succeeded()
    assert card("passed", "error", "not attempted", cell_errors=("c",)).totals() == (
        "3 exercises: 1 passed, 1 error, 1 not attempted; 1 cell raised an error"
    )


def test_result_record_round_trips(square: str) -> None:
    result = check(square, lambda x: x * abs(x))
    assert ExerciseResult.from_record(result.to_record()) == result


def test_html_box_is_coloured_and_escaped() -> None:
    result = ExerciseResult("t.html", "Tags <b>", "failed", "failed for '<s>'", hint="a & b")
    box = result.to_html()
    assert "#c62828" in box and "#fdecea" in box
    assert "Tags &lt;b&gt;" in box and "failed for &#x27;&lt;s&gt;&#x27;" in box
    assert "a &amp; b" in box


def test_in_jupyter_the_result_is_shown_once_per_cell(
    square: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FakeShell:
        execution_count = 7

    shown: list[tuple[dict, dict]] = []
    monkeypatch.setattr(core, "get_ipython", FakeShell)
    monkeypatch.setattr(core, "display", lambda data, **options: shown.append((data, options)))

    result = check(square, square_reference)
    assert len(shown) == 1
    data, options = shown[0]
    assert data["text/plain"] == "✓ test.square: passed (3 cases)"
    assert "#e6f4ea" in data["text/html"]
    assert options == {"raw": True}  # no result in the metadata: graders read it elsewhere

    result._ipython_display_()  # the cell's value: already shown in this cell
    assert len(shown) == 1
    FakeShell.execution_count = 8
    result._ipython_display_()  # shown again from a later cell
    assert len(shown) == 2
