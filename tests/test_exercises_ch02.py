"""The checkers of chapter 2 accept right answers and reject the typical wrong ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmcourse.exercises import check
from llmcourse.exercises.ch02_data_sampling import (
    reference_batch_shapes,
    reference_count_windows,
    reference_input_target_windows,
    reference_next_token_pairs,
)
from llmcourse.sliding_window import SlidingWindowDataset, create_dataloader


def run(exercise_id, answer):
    return check(exercise_id, answer, strict=False)


# ----------------------------------------------------------------------------------------------
# The references agree with the package and with the book


def test_reference_pairs_follow_the_book():
    # The book's example: " and" -> " established", " and established" -> " himself", ...
    assert reference_next_token_pairs([290, 4920, 2241, 287, 257], 4) == [
        ([290], 4920),
        ([290, 4920], 2241),
        ([290, 4920, 2241], 287),
        ([290, 4920, 2241, 287], 257),
    ]
    assert reference_next_token_pairs([10, 20, 30], 5) == [([10], 20), ([10, 20], 30)]
    assert reference_next_token_pairs([42], 3) == []


@pytest.mark.parametrize("max_length", [1, 2, 4])
@pytest.mark.parametrize("stride", [1, 3, 4, 5])
def test_reference_windows_match_the_package_dataset(max_length, stride):
    ids = list(range(100, 123))
    dataset = SlidingWindowDataset(ids, max_length=max_length, stride=stride)
    inputs, targets = reference_input_target_windows(ids, max_length, stride)
    assert reference_count_windows(len(ids), max_length, stride) == len(dataset)
    assert torch.equal(inputs, torch.stack([dataset[i][0] for i in range(len(dataset))]))
    assert torch.equal(targets, torch.stack([dataset[i][1] for i in range(len(dataset))]))


def test_reference_count_is_zero_when_no_window_fits():
    for num_tokens in range(0, 5):
        assert reference_count_windows(num_tokens, max_length=4, stride=1) == 0


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize(("num_tokens", "batch_size"), [(21, 2), (17, 2), (41, 3)])
def test_reference_batch_shapes_match_the_package_loader(num_tokens, batch_size, drop_last):
    dataset = SlidingWindowDataset(list(range(num_tokens)), max_length=4, stride=4)
    loader = create_dataloader(dataset, batch_size=batch_size, shuffle=False, drop_last=drop_last)
    shapes = [tuple(inputs.shape) for inputs, _ in loader]
    assert reference_batch_shapes(num_tokens, 4, 4, batch_size, drop_last) == shapes


# ----------------------------------------------------------------------------------------------
# ch02.next_token_pairs


def learner_next_token_pairs(token_ids, context_size):
    pairs = []
    for i in range(1, context_size + 1):
        if i >= len(token_ids):
            break
        pairs.append((token_ids[:i], token_ids[i]))
    return pairs


def test_next_token_pairs_accepts_right_answers():
    assert run("ch02.next_token_pairs", reference_next_token_pairs).status == "passed"
    result = run("ch02.next_token_pairs", learner_next_token_pairs)
    assert result.status == "passed"
    assert result.cases >= 15


def test_next_token_pairs_accepts_tensor_contexts_and_list_pairs():
    def with_tensors(token_ids, context_size):
        ids = torch.tensor(token_ids, dtype=torch.long)
        pairs = reference_next_token_pairs(token_ids, context_size)
        return [[ids[: len(context)], ids[len(context)]] for context, _ in pairs]

    assert run("ch02.next_token_pairs", with_tensors).status == "passed"


def test_next_token_pairs_rejects_target_not_shifted():
    def target_not_shifted(token_ids, context_size):
        return [(token_ids[:i], token_ids[i - 1]) for i in range(1, context_size + 1)]

    result = run("ch02.next_token_pairs", target_not_shifted)
    assert result.status == "failed"
    assert "the book's example" in result.message
    assert "item 0: item 1: expected 4920, got 290" in result.message
    assert "the target is the token right after it" in result.hint


def test_next_token_pairs_rejects_an_empty_first_context():
    def starts_with_empty_context(token_ids, context_size):
        return [(token_ids[:i], token_ids[i]) for i in range(context_size)]

    result = run("ch02.next_token_pairs", starts_with_empty_context)
    assert result.status == "failed"
    assert "item 0: item 0: got 0 items but expected 1" in result.message
    assert "for i = 1, 2, ..., context_size" in result.hint


def test_next_token_pairs_rejects_one_pair_too_few():
    def one_pair_too_few(token_ids, context_size):
        return [(token_ids[:i], token_ids[i]) for i in range(1, context_size)]

    result = run("ch02.next_token_pairs", one_pair_too_few)
    assert result.status == "failed"
    assert "got 3 items but expected 4" in result.message


def test_next_token_pairs_reports_running_past_the_ids():
    def never_stops(token_ids, context_size):
        return [(token_ids[:i], token_ids[i]) for i in range(1, context_size + 1)]

    result = run("ch02.next_token_pairs", never_stops)
    assert result.status == "error"
    assert "the ids run out after 2 pairs" in result.message
    assert "IndexError" in result.message


def test_next_token_pairs_rejects_pairs_that_are_not_pairs():
    result = run("ch02.next_token_pairs", lambda ids, size: [ids[:i] for i in range(1, size + 1)])
    assert result.status == "failed"
    assert "every item must be a (context, target) pair" in result.message


def pairs_with_zip(token_ids, context_size):
    contexts = [token_ids[:i] for i in range(1, len(token_ids))]
    return list(zip(contexts, token_ids[1:], strict=True))[:context_size]


def pairs_as_tuples(token_ids, context_size):
    return tuple(
        (tuple(token_ids[:i]), token_ids[i])
        for i in range(1, min(context_size + 1, len(token_ids)))
    )


@pytest.mark.parametrize("answer", [pairs_with_zip, pairs_as_tuples])
def test_next_token_pairs_accepts_answers_written_differently(answer):
    result = run("ch02.next_token_pairs", answer)
    assert result.status == "passed", result.message_with_hint


def pairs_that_truncate_the_ids(token_ids, context_size):
    del token_ids[context_size + 1 :]  # the ids past the last target are not needed ...
    return reference_next_token_pairs(token_ids, context_size)  # ... but they are the caller's


def float_targets(token_ids, context_size):
    return [(c, float(t)) for c, t in reference_next_token_pairs(token_ids, context_size)]


def string_contexts(token_ids, context_size):
    pairs = reference_next_token_pairs(token_ids, context_size)
    return [([str(token) for token in context], target) for context, target in pairs]


def float_tensor_contexts(token_ids, context_size):
    ids = torch.tensor(token_ids, dtype=torch.float32)
    return [(ids[: len(c)], t) for c, t in reference_next_token_pairs(token_ids, context_size)]


def slice_targets(token_ids, context_size):
    last = min(context_size, len(token_ids) - 1)
    return [(token_ids[:i], token_ids[i : i + 1]) for i in range(1, last + 1)]


def previous_token_only(token_ids, context_size):
    last = min(context_size, len(token_ids) - 1)
    return [(token_ids[i - 1 : i], token_ids[i]) for i in range(1, last + 1)]


def context_holds_the_target(token_ids, context_size):
    last = min(context_size, len(token_ids) - 1)
    return [(token_ids[: i + 1], token_ids[i]) for i in range(1, last + 1)]


def context_is_an_id(token_ids, context_size):
    last = min(context_size, len(token_ids) - 1)
    return [(token_ids[i - 1], token_ids[i]) for i in range(1, last + 1)]


def pairs_not_returned(token_ids, context_size):
    pairs = reference_next_token_pairs(token_ids, context_size)  # noqa: F841


PAIR_MISTAKES = [  # (answer, words of the message, words of the hint)
    (pairs_that_truncate_the_ids, "was [7, 8, 9] before the call and [7, 8] after it",
     "your function changed its argument `token_ids` in place; work on a copy"),
    (float_targets, "expected int 4920, got float 4920.0", "token ids stay ints"),
    (string_contexts, "expected int 290, got str '290'", "token ids stay ints"),
    (float_tensor_contexts, "expected int 290, got float 290.0", "token ids stay ints"),
    (slice_targets, "expected int 4920, got list [4920]", "the target is one id, token_ids[i]"),
    (previous_token_only, "item 1: item 0: item 0: expected 290, got 4920",
     "not only the one right before it"),
    (context_holds_the_target, "item 0: item 0: got 2 items but expected 1",
     "the context stops before the target"),
    (context_is_an_id, "every context must be a list of ids, got 290",
     "the context is the list token_ids[:i]"),
    (pairs_not_returned, "returned None", "did you forget `return`?"),
]


@pytest.mark.parametrize(
    ("answer", "detail", "hint"), PAIR_MISTAKES, ids=[row[0].__name__ for row in PAIR_MISTAKES]
)
def test_next_token_pairs_rejects_a_typical_mistake_with_its_hint(answer, detail, hint):
    result = run("ch02.next_token_pairs", answer)
    assert result.status == "failed", result.message_with_hint
    assert detail in result.message
    assert hint in result.hint


# ----------------------------------------------------------------------------------------------
# ch02.input_target_windows


def learner_windows(token_ids, max_length, stride):
    inputs, targets = [], []
    for start in range(0, len(token_ids) - max_length, stride):
        inputs.append(torch.tensor(token_ids[start : start + max_length]))
        targets.append(torch.tensor(token_ids[start + 1 : start + max_length + 1]))
    return torch.stack(inputs), torch.stack(targets)


def windows_with_starts(starts_of, shift_inputs=0, shift_targets=1):
    """A windowing answer with the given starts and shifts (for building wrong answers)."""

    def answer(token_ids, max_length, stride):
        ids = torch.tensor(token_ids)
        starts = starts_of(len(ids), max_length, stride)
        inputs = [ids[s + shift_inputs : s + shift_inputs + max_length] for s in starts]
        targets = [ids[s + shift_targets : s + shift_targets + max_length] for s in starts]
        return torch.stack(inputs), torch.stack(targets)

    return answer


def right_starts(n, max_length, stride):
    return range(0, n - max_length, stride)


def test_input_target_windows_accepts_right_answers():
    result = run("ch02.input_target_windows", reference_input_target_windows)
    assert result.status == "passed"
    assert result.cases == 17
    assert run("ch02.input_target_windows", learner_windows).status == "passed"
    assert run("ch02.input_target_windows", windows_with_starts(right_starts)).status == "passed"


def test_input_target_windows_rejects_targets_not_shifted():
    result = run("ch02.input_target_windows", windows_with_starts(right_starts, shift_targets=0))
    assert result.status == "failed"
    assert "exactly one window): in the targets," in result.message
    assert "expected 11, got 10" in result.message
    assert "targets token_ids[s + 1 : s + max_length + 1]" in result.hint


def test_input_target_windows_rejects_a_shift_the_wrong_way():
    swapped = windows_with_starts(right_starts, shift_inputs=1, shift_targets=0)
    result = run("ch02.input_target_windows", swapped)
    assert result.status == "failed"
    assert "exactly one window): in the inputs," in result.message
    assert "inputs are token_ids[s : s + max_length]" in result.hint


def test_input_target_windows_rejects_an_ignored_stride():
    result = run("ch02.input_target_windows", windows_with_starts(lambda n, m, s: range(n - m)))
    assert result.status == "failed"
    assert "stride=4 (two windows" in result.message
    assert "got shape (5, 4) but expected (2, 4)" in result.message
    assert "window i starts at s = i * stride" in result.hint


def test_input_target_windows_rejects_one_window_too_few():
    too_few = windows_with_starts(lambda n, m, s: range(0, n - m - 1, s))
    result = run("ch02.input_target_windows", too_few)
    assert result.status in ("failed", "error")  # torch.stack of no window raises
    assert "exactly one window" in result.message


def test_input_target_windows_rejects_one_window_too_many():
    def too_many(token_ids, max_length, stride):  # pads the last, short target with zeros
        ids = torch.tensor(token_ids + [0])
        starts = range(0, len(token_ids) - max_length + 1, stride)
        inputs = torch.stack([ids[s : s + max_length] for s in starts])
        return inputs, torch.stack([ids[s + 1 : s + max_length + 1] for s in starts])

    result = run("ch02.input_target_windows", too_many)
    assert result.status == "failed"
    assert "got shape (2, 4) but expected (1, 4)" in result.message
    assert "the last start is at most len(token_ids) - max_length - 1" in result.hint


def test_input_target_windows_rejects_lists_instead_of_tensors():
    def as_lists(token_ids, max_length, stride):
        inputs, targets = reference_input_target_windows(token_ids, max_length, stride)
        return inputs.tolist(), targets.tolist()

    result = run("ch02.input_target_windows", as_lists)
    assert result.status == "failed"
    assert "expected a tensor, got list" in result.message


def test_input_target_windows_rejects_a_single_tensor():
    def inputs_only(token_ids, max_length, stride):
        return reference_input_target_windows(token_ids, max_length, stride)[0]

    result = run("ch02.input_target_windows", inputs_only)
    assert result.status == "failed"
    assert "expected a pair (inputs, targets) of tensors" in result.message


def windows_by_unfold(token_ids, max_length, stride):
    ids = torch.as_tensor(token_ids)
    return ids[:-1].unfold(0, max_length, stride), ids[1:].unfold(0, max_length, stride)


def test_input_target_windows_accepts_an_unfold():
    result = run("ch02.input_target_windows", windows_by_unfold)
    assert result.status == "passed", result.message_with_hint


def windows_that_consume_the_ids(token_ids, max_length, stride):
    inputs, targets = [], []
    while len(token_ids) > max_length:
        inputs.append(token_ids[:max_length])
        targets.append(token_ids[1 : max_length + 1])
        del token_ids[:stride]
    return torch.tensor(inputs), torch.tensor(targets)


def int32_windows(token_ids, max_length, stride):
    inputs, targets = reference_input_target_windows(token_ids, max_length, stride)
    return inputs.int(), targets.int()


def float_windows(token_ids, max_length, stride):
    ids = torch.Tensor(token_ids)  # capital T: float32
    starts = range(0, len(ids) - max_length, stride)
    return (torch.stack([ids[s : s + max_length] for s in starts]),
            torch.stack([ids[s + 1 : s + max_length + 1] for s in starts]))


def unstacked_windows(token_ids, max_length, stride):
    ids = torch.tensor(token_ids)
    starts = range(0, len(ids) - max_length, stride)
    return ([ids[s : s + max_length] for s in starts],
            [ids[s + 1 : s + max_length + 1] for s in starts])


def windows_not_returned(token_ids, max_length, stride):
    inputs, targets = reference_input_target_windows(token_ids, max_length, stride)  # noqa: F841


WINDOW_MISTAKES = [  # (answer, words of the message, words of the hint)
    (windows_that_consume_the_ids, "was [10, 11, 12, 13, 14] before the call and [11, 12, 13, 14]",
     "your function changed its argument `token_ids` in place"),
    (int32_windows, "in the inputs, got a tensor of dtype torch.int32 but expected torch.int64",
     "token ids are int64 (torch.long)"),
    (float_windows, "got a tensor of dtype torch.float32 but expected torch.int64",
     "torch.Tensor(token_ids) gives float32"),
    (unstacked_windows, "in the inputs, expected a tensor, got list",
     "torch.stack the list of window tensors"),
    (windows_not_returned, "returned None", "did you forget `return`?"),
]


@pytest.mark.parametrize(
    ("answer", "detail", "hint"), WINDOW_MISTAKES, ids=[row[0].__name__ for row in WINDOW_MISTAKES]
)
def test_input_target_windows_rejects_a_typical_mistake_with_its_hint(answer, detail, hint):
    result = run("ch02.input_target_windows", answer)
    assert result.status == "failed", result.message_with_hint
    assert detail in result.message
    assert hint in result.hint


# ----------------------------------------------------------------------------------------------
# ch02.count_windows


def test_count_windows_accepts_right_answers():
    def by_range(num_tokens, max_length, stride):
        return len(range(0, num_tokens - max_length, stride))

    def by_ceiling(num_tokens, max_length, stride):
        return max(0, math.ceil((num_tokens - max_length) / stride))

    def as_a_tensor(num_tokens, max_length, stride):
        return torch.tensor(max(0, (num_tokens - max_length - 1) // stride + 1))

    def by_numpy(num_tokens, max_length, stride):
        return np.int64(max(0, num_tokens - max_length + stride - 1)) // stride

    for answer in (reference_count_windows, by_range, by_ceiling, as_a_tensor, by_numpy):
        result = run("ch02.count_windows", answer)
        assert result.status == "passed", result.message_with_hint


COUNT_HINT = "s + max_length + 1 <= num_tokens"


def count_not_returned(num_tokens, max_length, stride):
    count = max(0, (num_tokens - max_length - 1) // stride + 1)  # noqa: F841


@pytest.mark.parametrize(
    ("mistake", "answer", "failing_case", "detail", "hint"),
    [
        ("one_window_too_many", lambda n, m, s: (n - m) // s + 1,
         "num_tokens=5, max_length=4, stride=1 (exactly one window)", "expected 1, got 2",
         COUNT_HINT),
        ("one_window_too_few", lambda n, m, s: (n - m) // s,
         "num_tokens=9, max_length=4, stride=4", "expected 2, got 1", COUNT_HINT),
        ("stride_ignored", lambda n, m, s: max(0, n - m),
         "num_tokens=9, max_length=4, stride=4", "expected 2, got 5", COUNT_HINT),
        ("negative_count_for_short_text", lambda n, m, s: (n - m - 1) // s + 1,
         "num_tokens=0, max_length=3, stride=2 (no tokens)", "expected 0, got -1",
         "return 0 there, not a negative count"),
        ("float_division", lambda n, m, s: max(0, (n - m - 1) / s + 1),
         "num_tokens=5, max_length=4, stride=1", "expected int 1, got float 1.0",
         "use floor division //, not /"),
        ("float_tensor", lambda n, m, s: torch.tensor(float(max(0, (n - m - 1) // s + 1))),
         "num_tokens=5, max_length=4, stride=1", "expected int 1, got Tensor",
         "use floor division //, not /"),
        ("the_starts_not_their_number", lambda n, m, s: list(range(0, n - m, s)),
         "num_tokens=5, max_length=4, stride=1", "expected int 1, got list [0]",
         "not the starts themselves"),
        ("no_return", count_not_returned, "num_tokens=5, max_length=4, stride=1",
         "returned None but expected 1", "did you forget `return`?"),
    ],
)
def test_count_windows_rejects(mistake, answer, failing_case, detail, hint):
    result = run("ch02.count_windows", answer)
    assert result.status == "failed", mistake
    assert failing_case in result.message
    assert detail in result.message
    assert hint in result.hint


# ----------------------------------------------------------------------------------------------
# ch02.batch_shapes


def learner_batch_shapes(num_tokens, max_length, stride, batch_size, drop_last):
    windows = len(range(0, num_tokens - max_length, stride))
    shapes = [torch.Size([batch_size, max_length])] * (windows // batch_size)
    if windows % batch_size and not drop_last:
        shapes.append(torch.Size([windows % batch_size, max_length]))
    return shapes


def batch_shapes_by_grouping(num_tokens, max_length, stride, batch_size, drop_last):
    starts = list(range(0, num_tokens - max_length, stride))
    batches = [starts[i : i + batch_size] for i in range(0, len(starts), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return tuple([len(batch), max_length] for batch in batches)  # a tuple of lists


def batch_shapes_with_numpy(num_tokens, max_length, stride, batch_size, drop_last):
    windows = np.int64(max(0, (num_tokens - max_length - 1) // stride + 1))
    full, left = divmod(windows, batch_size)
    return [(batch_size, max_length)] * int(full) + ([(left, max_length)] if left and not drop_last
                                                     else [])


def test_batch_shapes_accepts_right_answers():
    assert run("ch02.batch_shapes", reference_batch_shapes).status == "passed"
    assert run("ch02.batch_shapes", learner_batch_shapes).status == "passed"


@pytest.mark.parametrize("answer", [batch_shapes_by_grouping, batch_shapes_with_numpy])
def test_batch_shapes_accepts_answers_written_differently(answer):
    result = run("ch02.batch_shapes", answer)
    assert result.status == "passed", result.message_with_hint


def keeps_short_batch(num_tokens, max_length, stride, batch_size, drop_last):
    return reference_batch_shapes(num_tokens, max_length, stride, batch_size, False)


def drops_short_batch(num_tokens, max_length, stride, batch_size, drop_last):
    return reference_batch_shapes(num_tokens, max_length, stride, batch_size, True)


def transposed_shapes(num_tokens, max_length, stride, batch_size, drop_last):
    shapes = reference_batch_shapes(num_tokens, max_length, stride, batch_size, drop_last)
    return [(columns, rows) for rows, columns in shapes]


def short_batch_padded_to_full(num_tokens, max_length, stride, batch_size, drop_last):
    windows = reference_count_windows(num_tokens, max_length, stride)
    batches = windows // batch_size if drop_last else math.ceil(windows / batch_size)
    return [(batch_size, max_length)] * batches


def windows_off_by_one(num_tokens, max_length, stride, batch_size, drop_last):
    return reference_batch_shapes(num_tokens + 1, max_length, stride, batch_size, drop_last)


def stride_ignored(num_tokens, max_length, stride, batch_size, drop_last):
    return reference_batch_shapes(num_tokens, max_length, 1, batch_size, drop_last)


def float_sizes(num_tokens, max_length, stride, batch_size, drop_last):
    windows = max(0, (num_tokens - max_length - 1) / stride + 1)  # / where // was meant
    full = windows // batch_size
    left = (windows - full * batch_size) // 1
    return [(float(batch_size), max_length)] * int(full) + (
        [(left, max_length)] if left and not drop_last else []
    )


def number_of_batches(num_tokens, max_length, stride, batch_size, drop_last):
    return len(reference_batch_shapes(num_tokens, max_length, stride, batch_size, drop_last))


def shapes_not_returned(num_tokens, max_length, stride, batch_size, drop_last):
    shapes = reference_batch_shapes(num_tokens, max_length, stride, batch_size, drop_last)  # noqa: F841


BATCH_HINT = "drop_last=True drops it"


@pytest.mark.parametrize(
    ("answer", "failing_case", "detail", "hint"),
    [
        (keeps_short_batch, "drop_last=True (the book)", "got 161 items but expected 160",
         BATCH_HINT),
        (drops_short_batch, "drop_last=False (the book)", "got 160 items but expected 161",
         BATCH_HINT),
        (transposed_shapes, "drop_last=True (the book)", "item 0: item 0: expected 8, got 4",
         BATCH_HINT),
        (short_batch_padded_to_full, "drop_last=False (the book)",
         "item 160: item 0: expected 6, got 8", BATCH_HINT),
        (windows_off_by_one, "num_tokens=10, max_length=4, stride=1, batch_size=8",
         "item 0: item 0: expected 6, got 7", "count the windows first"),
        (stride_ignored, "drop_last=True (the book)", "got 642 items but expected 160",
         "count the windows first"),
        (float_sizes, "drop_last=True (the book)", "item 0: item 0: expected int 8, got float 8.0",
         "floor division //, not /"),
        (number_of_batches, "drop_last=True (the book)", "got int 160",
         "not how many batches there are"),
        (shapes_not_returned, "drop_last=True (the book)", "returned None",
         "did you forget `return`?"),
    ],
)
def test_batch_shapes_rejects(answer, failing_case, detail, hint):
    result = run("ch02.batch_shapes", answer)
    assert result.status == "failed", answer.__name__
    assert failing_case in result.message
    assert detail in result.message
    assert hint in result.hint

