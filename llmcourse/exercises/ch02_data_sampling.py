"""Checkers of chapter 2, data sampling: next-token pairs, sliding windows, window and batch counts.

Each checker runs the learner's function and a reference on hand-picked edge cases first (a text
just long enough for one window, a last window that ends on the last token, a stride equal to
the window) and then on random cases, and stops at the first difference.
"""

from __future__ import annotations

import numbers

import torch

from llmcourse.exercises.core import (
    Mismatch,
    Mistake,
    describe,
    exercise,
    expect_equal,
    run_cases,
)
from llmcourse.exercises.inputs import expect_inputs_and_targets, randint, random_ids

Pair = tuple[list[int], int]

# ----------------------------------------------------------------------------------------------
# References


def reference_next_token_pairs(token_ids: list[int], context_size: int) -> list[Pair]:
    """Pairs (token_ids[:i], token_ids[i]) for i = 1..context_size, while a target exists."""
    last = min(context_size, len(token_ids) - 1)
    return [(list(token_ids[:i]), token_ids[i]) for i in range(1, last + 1)]


def reference_count_windows(num_tokens: int, max_length: int, stride: int) -> int:
    """How many starts 0, stride, 2*stride, ... leave room for max_length inputs plus a target."""
    if num_tokens < max_length + 1:
        return 0
    return (num_tokens - max_length - 1) // stride + 1


def reference_input_target_windows(
    token_ids: list[int], max_length: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets, each (num_windows, max_length) int64; targets shifted by one token."""
    ids = torch.tensor(token_ids, dtype=torch.long)
    starts = range(0, reference_count_windows(len(ids), max_length, stride) * stride, stride)
    inputs = [ids[start : start + max_length] for start in starts]
    targets = [ids[start + 1 : start + max_length + 1] for start in starts]
    return torch.stack(inputs), torch.stack(targets)


def reference_batch_shapes(
    num_tokens: int, max_length: int, stride: int, batch_size: int, drop_last: bool
) -> list[tuple[int, int]]:
    """Shapes of the input batches of one epoch, in order."""
    num_windows = reference_count_windows(num_tokens, max_length, stride)
    full_batches, remainder = divmod(num_windows, batch_size)
    shapes = [(batch_size, max_length)] * full_batches
    if remainder and not drop_last:
        shapes.append((remainder, max_length))
    return shapes


# ----------------------------------------------------------------------------------------------
# Random inputs


# ----------------------------------------------------------------------------------------------
# ch02.next_token_pairs


def _as_pairs(value: object, case: str) -> list[Pair] | object:
    """The answer as a list of (list of ints, int) when it has that structure, else unchanged.

    Accepts tuples or lists for the pairs and contexts, and tensors for the ids.
    """
    if not isinstance(value, (list, tuple)):
        return value
    pairs = []
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise Mismatch(
                case, "(context, target) pairs", value,
                detail=f"every item must be a (context, target) pair, got {describe(item)}",
            )
        context, target = item
        if isinstance(context, torch.Tensor) and context.dim() == 1:
            context = context.tolist()
        if not isinstance(context, (list, tuple)):
            raise Mismatch(
                case, "(context, target) pairs", value,
                "the context is the list token_ids[:i], even when it holds a single id",
                detail=f"every context must be a list of ids, got {describe(context)}",
            )
        if isinstance(target, torch.Tensor) and target.numel() == 1:
            target = target.item()
        pairs.append((list(context), target))
    return pairs


def _is_int(value: object) -> bool:
    """An integer that is not a bool: a Python int, or a NumPy integer."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _pairs_hint(pairs: object) -> str:
    """A hint for pairs whose targets or context ids are not plain ints, else ""."""
    if not isinstance(pairs, list):
        return ""
    for context, target in pairs:
        if isinstance(target, (list, tuple, torch.Tensor)):
            return (
                "the target is one id, token_ids[i] (an int), not a list or a slice such as "
                "token_ids[i : i + 1]"
            )
        if not _is_int(target) or not all(_is_int(token) for token in context):
            return (
                "token ids stay ints: put the ids of token_ids into the contexts and targets "
                "as they are, not turned into floats or strings"
            )
    return ""


def _expect_pairs(got: object, expected: list[Pair], *, case: str, hint: str = "") -> None:
    pairs = _as_pairs(got, case)
    try:
        expect_equal(pairs, expected, case=case, hint=hint)
    except Mismatch as mismatch:
        mismatch.hint = mismatch.hint or _pairs_hint(pairs)
        raise


def _pair_range(token_ids: list[int], context_size: int) -> range:
    return range(1, min(context_size, len(token_ids) - 1) + 1)


PAIR_MISTAKES = (
    Mistake(
        "previous_token_only",
        lambda ids, size: [(list(ids[i - 1 : i]), ids[i]) for i in _pair_range(ids, size)],
        "the context is every token before the target, token_ids[:i], not only the one right "
        "before it",
    ),
    Mistake(
        "context_holds_the_target",
        lambda ids, size: [(list(ids[: i + 1]), ids[i]) for i in _pair_range(ids, size)],
        "the context stops before the target: token_ids[:i] ends at index i - 1, and the target "
        "token_ids[i] is not part of it",
    ),
)


@exercise(
    "ch02.next_token_pairs",
    title="Next-token (context, target) pairs",
    hint="pair i is (token_ids[:i], token_ids[i]) for i = 1, 2, ..., context_size: the context "
    "grows by one token and the target is the token right after it; stop when no token is left "
    "to be a target",
)
def check_next_token_pairs(answer: object) -> None:
    generator = torch.Generator().manual_seed(2)
    book_ids = [290, 4920, 2241, 287, 257]  # " and established himself in a" in GPT-2 ids
    cases = [
        (f"token_ids={book_ids}, context_size=4 (the book's example)", (book_ids, 4)),
        ("token_ids=[7, 8, 9], context_size=1", ([7, 8, 9], 1)),
        ("token_ids=[5, 1, 4, 2, 3, 9], context_size=3 (more ids than needed)",
         ([5, 1, 4, 2, 3, 9], 3)),
        ("token_ids=[4, 4, 4], context_size=2 (a repeated id)", ([4, 4, 4], 2)),
        ("token_ids=[10, 20, 30], context_size=5 (the ids run out after 2 pairs)",
         ([10, 20, 30], 5)),
        ("token_ids=[42], context_size=3 (one id: no target, no pair)", ([42], 3)),
        ("token_ids=[], context_size=2 (no ids at all)", ([], 2)),
    ]
    for _ in range(10):
        ids = random_ids(generator, (randint(generator, 2, 30),)).tolist()
        context_size = randint(generator, 1, 12)
        cases.append((f"token_ids={describe(ids)} ({len(ids)} ids), context_size={context_size}",
                      (ids, context_size)))
    run_cases(answer, reference_next_token_pairs, cases, _expect_pairs, mistakes=PAIR_MISTAKES)


# ----------------------------------------------------------------------------------------------
# ch02.input_target_windows


@exercise(
    "ch02.input_target_windows",
    title="Sliding windows of inputs and targets",
    hint="window i starts at s = i * stride; its inputs are token_ids[s : s + max_length] and its "
    "targets token_ids[s + 1 : s + max_length + 1]; keep every window whose targets fit, so the "
    "last start is at most len(token_ids) - max_length - 1",
)
def check_input_target_windows(answer: object) -> None:
    generator = torch.Generator().manual_seed(3)
    cases = [
        ("token_ids=[10, 11, 12, 13, 14], max_length=4, stride=1 (exactly one window)",
         ([10, 11, 12, 13, 14], 4, 1)),
        ("token_ids=[0, ..., 8], max_length=4, stride=4 (two windows; the last target is 8)",
         (list(range(9)), 4, 4)),
        ("token_ids=[0, ..., 7], max_length=4, stride=4 (one window: the next has no full target)",
         (list(range(8)), 4, 4)),
        ("token_ids=[0, ..., 9], max_length=3, stride=1 (overlapping windows)",
         (list(range(10)), 3, 1)),
        ("token_ids=[0, ..., 11], max_length=3, stride=2", (list(range(12)), 3, 2)),
        ("token_ids=[0, ..., 11], max_length=2, stride=5 (a stride longer than the window)",
         (list(range(12)), 2, 5)),
        ("token_ids=[7, 3], max_length=1, stride=1", ([7, 3], 1, 1)),
    ]
    for _ in range(10):
        max_length = randint(generator, 1, 8)
        stride = randint(generator, 1, 10)
        ids = random_ids(generator, (randint(generator, max_length + 1, 60),)).tolist()
        cases.append((
            f"token_ids={describe(ids)} ({len(ids)} ids), max_length={max_length}, "
            f"stride={stride}",
            (ids, max_length, stride),
        ))
    run_cases(answer, reference_input_target_windows, cases, _expect_windows)


def _windows_hint(got: object) -> str:
    """A hint for inputs or targets that are not int64 tensors, else ""."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return ""
    for part in got:
        if not isinstance(part, torch.Tensor):
            return (
                "return two tensors of shape (num_windows, max_length): torch.stack the list "
                "of window tensors (or torch.tensor a list of window lists)"
            )
        if part.dtype != torch.int64:
            return (
                "token ids are int64 (torch.long): torch.tensor(token_ids) of Python ints gives "
                "int64, torch.Tensor(token_ids) gives float32; do not convert to int32"
            )
    return ""


def _expect_windows(
    got: object, expected: tuple[torch.Tensor, torch.Tensor], *, case: str, hint: str = ""
) -> None:
    try:
        expect_inputs_and_targets(got, expected, case=case, hint=hint)
    except Mismatch as mismatch:
        mismatch.hint = mismatch.hint or _windows_hint(got)
        raise


# ----------------------------------------------------------------------------------------------
# ch02.count_windows


@exercise(
    "ch02.count_windows",
    title="Count the windows",
    hint="count the starts s = 0, stride, 2*stride, ... for which s + max_length + 1 <= "
    "num_tokens: a window needs max_length input tokens plus one more for its last target",
)
def check_count_windows(answer: object) -> None:
    cases = [
        ("num_tokens=5, max_length=4, stride=1 (exactly one window)", (5, 4, 1)),
        ("num_tokens=10, max_length=4, stride=1 (a window at every start)", (10, 4, 1)),
        ("num_tokens=9, max_length=4, stride=4 (the last target ends on the last token)",
         (9, 4, 4)),
        ("num_tokens=8, max_length=4, stride=4 (the second window would miss its last target)",
         (8, 4, 4)),
        ("num_tokens=5145, max_length=4, stride=4 (the-verdict with GPT-2's tokenizer)",
         (5145, 4, 4)),
        ("num_tokens=5145, max_length=256, stride=128", (5145, 256, 128)),
        ("num_tokens=12, max_length=2, stride=5 (a stride longer than the window)", (12, 2, 5)),
        ("num_tokens=4, max_length=4, stride=1 (too short: no room for a target)", (4, 4, 1)),
        ("num_tokens=0, max_length=3, stride=2 (no tokens)", (0, 3, 2)),
    ]
    for num_tokens in range(1, 16):
        for max_length in (1, 3, 4):
            for stride in (1, 2, 3, 4, 5):
                cases.append((
                    f"num_tokens={num_tokens}, max_length={max_length}, stride={stride}",
                    (num_tokens, max_length, stride),
                ))
    run_cases(answer, reference_count_windows, cases, _expect_int)


def _expect_int(got: object, expected: int, *, case: str, hint: str = "") -> None:
    """``got`` equals the int ``expected``; an integer tensor or NumPy integer counts as an int."""
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point():
        got = int(got)
    elif _is_int(got):
        got = int(got)
    try:
        expect_equal(got, expected, case=case, hint=hint)
    except Mismatch as mismatch:
        mismatch.hint = mismatch.hint or _count_hint(got, expected)
        raise


def _count_hint(got: object, expected: int) -> str:
    """A hint for a count that is a float, a list, or negative where no window fits, else ""."""
    if isinstance(got, (list, tuple, range)):
        return "return how many windows there are, one int, not the starts themselves"
    if isinstance(got, float) or (isinstance(got, torch.Tensor) and got.is_floating_point()):
        return "a count is an int: use floor division //, not /"
    if isinstance(got, int) and got < 0 and expected == 0:
        return (
            "a text shorter than max_length + 1 tokens has no window: return 0 there, not a "
            "negative count"
        )
    return ""


# ----------------------------------------------------------------------------------------------
# ch02.batch_shapes


def _expect_shapes(
    got: object, expected: list[tuple[int, int]], *, case: str, hint: str = ""
) -> None:
    if isinstance(got, (list, tuple)) and all(isinstance(shape, (list, tuple)) for shape in got):
        got = [tuple(int(size) if _is_int(size) else size for size in shape) for shape in got]
    try:
        expect_equal(got, expected, case=case, hint=hint)
    except Mismatch as mismatch:
        floats = isinstance(got, list) and any(
            isinstance(size, float) for shape in got for size in shape
        )
        if floats:
            mismatch.hint = mismatch.hint or (
                "batch shapes hold ints: count windows and batches with floor division //, not /"
            )
        elif _is_int(got):
            mismatch.hint = mismatch.hint or (
                "return the list of shapes, one (rows, max_length) tuple per batch, not how many "
                "batches there are"
            )
        raise


_BATCH_ARGUMENTS = ("num_tokens", "max_length", "stride", "batch_size", "drop_last")


@exercise(
    "ch02.batch_shapes",
    title="Batch shapes of one epoch",
    hint="count the windows first (ch02.count_windows); each batch holds batch_size of them, "
    "shape (batch_size, max_length); the leftover windows form a smaller last batch, unless "
    "drop_last=True drops it",
)
def check_batch_shapes(answer: object) -> None:
    cases = [
        ("num_tokens=5145, max_length=4, stride=4, batch_size=8, drop_last=True (the book)",
         (5145, 4, 4, 8, True)),
        ("num_tokens=5145, max_length=4, stride=4, batch_size=8, drop_last=False (the book)",
         (5145, 4, 4, 8, False)),
        ("num_tokens=21, max_length=4, stride=4, batch_size=2, drop_last=False "
         "(5 windows: a last batch of 1)", (21, 4, 4, 2, False)),
        ("num_tokens=21, max_length=4, stride=4, batch_size=2, drop_last=True",
         (21, 4, 4, 2, True)),
        ("num_tokens=17, max_length=4, stride=4, batch_size=2, drop_last=False "
         "(4 windows: no leftover)", (17, 4, 4, 2, False)),
        ("num_tokens=10, max_length=4, stride=1, batch_size=8, drop_last=True "
         "(6 windows, fewer than one batch)", (10, 4, 1, 8, True)),
        ("num_tokens=10, max_length=4, stride=1, batch_size=8, drop_last=False",
         (10, 4, 1, 8, False)),
        ("num_tokens=3, max_length=4, stride=1, batch_size=2, drop_last=False (no window)",
         (3, 4, 1, 2, False)),
    ]
    generator = torch.Generator().manual_seed(4)
    for _ in range(20):
        arguments = (
            randint(generator, 1, 200), randint(generator, 1, 16),
            randint(generator, 1, 16), randint(generator, 1, 10),
            bool(randint(generator, 0, 1)),
        )
        description = ", ".join(
            f"{name}={value}" for name, value in zip(_BATCH_ARGUMENTS, arguments, strict=True)
        )
        cases.append((description, arguments))
    run_cases(answer, reference_batch_shapes, cases, _expect_shapes)

