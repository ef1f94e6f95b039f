"""Checkers of section 7.2, classification: the read position, padding, accuracy, confusion.

As in section 7.1 (with the engine's ``run_cases``), each checker runs hand-picked
cases first, then seeded random ones, and names a recognised typical mistake (the first
token instead of the last, left padding, a transposed confusion matrix...) in its hint.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from llmcourse.exercises.core import (
    LabelledArgs,
    Mismatch,
    Mistake,
    describe,
    exercise,
    expect_equal,
    run_cases,
)
from llmcourse.exercises.inputs import measurement_compare, randint, seeded
from llmcourse.model import GPT, GPTConfig

GPT2_PAD_ID = 50256  # <|endoftext|>, the padding token of the chapter


# ----------------------------------------------------------------------------------------------
# ch07.last_token_logits


def reference_last_token_logits(logits: torch.Tensor) -> torch.Tensor:
    """The logits of the last position of each sequence: (B, T, C) -> (B, C)."""
    return logits[:, -1, :]


LAST_TOKEN_MISTAKES = (
    Mistake(
        "first_token",
        lambda logits: logits[:, 0, :],
        "that is the FIRST position: in a causal model it has seen only the first token. "
        "Take the last one, logits[:, -1, :]",
    ),
    Mistake(
        "mean_pooling",
        lambda logits: logits.mean(dim=1),
        "you average over the positions; this classifier reads the last position only, the "
        "one that has attended to the whole message: logits[:, -1, :]",
    ),
    Mistake(
        "max_pooling",
        lambda logits: logits.amax(dim=1),
        "you take the largest logit over the positions; read the last position instead: "
        "logits[:, -1, :]",
    ),
    Mistake(
        "last_sequence_of_the_batch",
        lambda logits: logits[-1],
        "logits[-1] is the last SEQUENCE of the batch, (T, C); index the position "
        "dimension: logits[:, -1, :]",
    ),
    Mistake(
        "position_dimension_kept",
        lambda logits: logits[:, -1:, :],
        "logits[:, -1:, :] keeps a position dimension of size 1, (B, 1, C); index with -1, "
        "not a slice, to get (B, C)",
    ),
    Mistake(
        "last_class",
        lambda logits: logits[:, :, -1],
        "you take the last CLASS of every position, (B, T); take the last position: "
        "logits[:, -1, :]",
    ),
)


def _last_token_cases() -> list[LabelledArgs]:
    readable = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)
    generator = seeded(74)
    cases: list[LabelledArgs] = [
        ("logits = torch.arange(24.).reshape(2, 4, 3) (B=2, T=4, C=3)", (readable,)),
        ("one sequence of one token, logits of shape (1, 1, 2)", (torch.tensor([[[0.3, -0.2]]]),)),
        ("B=3, T=3, C=3 (all sizes equal)", (torch.randn(3, 3, 3, generator=generator),)),
    ]
    for shape in ((4, 7, 2), (2, 5, 50257), (8, 12, 2)):
        logits = torch.randn(shape, generator=generator)
        cases.append((f"random logits of shape {shape}", (logits,)))
    return cases


@exercise(
    "ch07.last_token_logits",
    title="The logits of the last token",
    hint="in a causal model only the last position has seen the whole sequence: "
    "logits[:, -1, :] turns (B, T, C) into (B, C)",
)
def check_last_token_logits(answer: object) -> None:
    run_cases(
        answer, reference_last_token_logits, _last_token_cases(), expect_equal,
        mistakes=LAST_TOKEN_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch07.last_real_positions


def reference_last_real_positions(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """For right-padded token ids (B, T): the position of the last token of each row that is
    not ``pad_id``, a long tensor (B,); 0 for a row of padding only."""
    positions = torch.arange(ids.shape[1])
    return ((ids != pad_id).long() * positions).amax(dim=1)


def _first_pad_minus_one(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    return (ids == pad_id).long().argmax(dim=1) - 1


LAST_REAL_MISTAKES = (
    Mistake(
        "number_of_real_tokens",
        lambda ids, pad_id: (ids != pad_id).sum(dim=1),
        "off by one: a row with n real tokens has its last one at position n - 1 (positions "
        "start at 0)",
    ),
    Mistake(
        "number_of_pads",
        lambda ids, pad_id: (ids == pad_id).sum(dim=1),
        "you count the padding tokens; count the real ones, those != pad_id, and subtract one",
    ),
    Mistake(
        "pad_id_hard_coded",
        lambda ids, pad_id: reference_last_real_positions(ids, GPT2_PAD_ID),
        f"use the pad_id argument, not a fixed {GPT2_PAD_ID}",
    ),
    Mistake(
        "always_the_last_position",
        lambda ids, pad_id: torch.full((ids.shape[0],), ids.shape[1] - 1),
        "T - 1 is the last position of the padded row, often a padding token; find the last "
        "position whose id is not pad_id",
    ),
    Mistake(
        "real_count_minus_one_without_floor",
        lambda ids, pad_id: (ids != pad_id).sum(dim=1) - 1,
        "a row of padding only has no real token: it gets 0 (not -1)",
    ),
    Mistake(
        "first_pad_minus_one",
        _first_pad_minus_one,
        "a row without padding has no padding token to look for: its last real token is at "
        "T - 1. Use the positions of the tokens != pad_id and take the largest",
    ),
)


def _last_real_cases() -> list[LabelledArgs]:
    pad = GPT2_PAD_ID
    readable = torch.tensor([[15, 16, 17, pad, pad], [18, pad, pad, pad, pad], [1, 2, 3, 4, 5]])
    generator = seeded(75)
    cases: list[LabelledArgs] = [
        (f"ids={readable.tolist()}, pad_id={pad}", (readable, pad)),
        ("ids=[[7, 8, 0, 0], [9, 0, 0, 0]], pad_id=0", (torch.tensor([[7, 8, 0, 0], [9, 0, 0, 0]]),
                                                        0)),
        (f"a row of padding only: ids=[[3, 4, {pad}], [{pad}, {pad}, {pad}]], pad_id={pad}",
         (torch.tensor([[3, 4, pad], [pad, pad, pad]]), pad)),
        ("no padding at all: ids=[[5, 6, 7], [8, 9, 10]], pad_id=0",
         (torch.tensor([[5, 6, 7], [8, 9, 10]]), 0)),
        ("one token per row: ids=[[4], [11]], pad_id=11", (torch.tensor([[4], [11]]), 11)),
    ]
    for batch, length in ((4, 12), (8, 30)):
        real_lengths = [randint(generator, 1, length) for _ in range(batch)]
        rows = [torch.randint(0, pad, (n,), generator=generator).tolist() + [pad] * (length - n)
                for n in real_lengths]
        cases.append((
            f"random right-padded ids ({batch}, {length}) with real lengths {real_lengths}, "
            f"pad_id={pad}", (torch.tensor(rows), pad),
        ))
    return cases


@exercise(
    "ch07.last_real_positions",
    title="Where each padded message ends",
    hint="mark the tokens that are not pad_id, and take the largest position among them "
    "(0 for a row of padding only)",
)
def check_last_real_positions(answer: object) -> None:
    run_cases(
        answer, reference_last_real_positions, _last_real_cases(), expect_equal,
        mistakes=LAST_REAL_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch07.accuracy


def reference_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction (a float in [0, 1]) of rows of ``logits`` (N, C) whose largest logit is at
    the true class ``labels`` (N,)."""
    return (logits.argmax(dim=-1) == labels).sum().item() / len(labels)


def expect_fraction(got: object, expected: float, *, case: str, hint: str = "") -> None:
    """Raise ``Mismatch`` unless ``got`` is a Python float within 1e-6 of ``expected``."""
    if not isinstance(got, float):
        raise Mismatch(
            case, expected, got, hint,
            detail=f"expected a Python float such as {expected!r}, got {type(got).__name__} "
            f"{describe(got)} (a one-element tensor becomes a float with .item())",
        )
    if abs(got - expected) > 1e-6:
        raise Mismatch(case, expected, got, hint)


ACCURACY_MISTAKES = (
    Mistake(
        "percent",
        lambda logits, labels: 100 * reference_accuracy(logits, labels),
        "return a fraction between 0 and 1, not a percentage",
    ),
    Mistake(
        "count",
        lambda logits, labels: float((logits.argmax(dim=-1) == labels).sum()),
        "divide the number of correct predictions by the number of examples",
    ),
    Mistake(
        "error_rate",
        lambda logits, labels: 1 - reference_accuracy(logits, labels),
        "that is the fraction of WRONG predictions; count the rows where the prediction "
        "equals the label",
    ),
    Mistake(
        "argmax_over_the_examples",
        lambda logits, labels: (logits.argmax(dim=0) == labels).float().mean().item(),
        "the predicted class of a row is the argmax over the classes, the last dimension "
        "(dim=-1), not over the examples (dim=0)",
    ),
)


def _accuracy_cases() -> list[LabelledArgs]:
    three_classes = torch.tensor([[0.0, 5.0, 1.0], [2.0, 1.0, 0.0], [4.0, 0.0, 3.0]])
    two_classes = torch.tensor([[2.0, -1.0], [0.5, 1.5], [3.0, 0.0], [-2.0, -1.0]])
    generator = seeded(76)
    cases: list[LabelledArgs] = [
        (f"logits={three_classes.tolist()}, labels=[1, 1, 0]",
         (three_classes, torch.tensor([1, 1, 0]))),
        (f"logits={two_classes.tolist()}, labels=[0, 1, 1, 1]",
         (two_classes, torch.tensor([0, 1, 1, 1]))),
        (f"logits={two_classes[:3].tolist()}, labels=[1, 0, 1] (none right)",
         (two_classes[:3], torch.tensor([1, 0, 1]))),
        ("one example: logits=[[0.1, 0.9]], labels=[1]",
         (torch.tensor([[0.1, 0.9]]), torch.tensor([1]))),
    ]
    for n, classes in ((8, 2), (30, 2), (25, 5)):
        cases.append((
            f"random logits ({n}, {classes}) and labels ({n},)",
            (torch.randn(n, classes, generator=generator),
             torch.randint(0, classes, (n,), generator=generator)),
        ))
    return cases


@exercise(
    "ch07.accuracy",
    title="Accuracy from logits",
    hint="predicted class = logits.argmax(dim=-1); accuracy = (number of predictions equal "
    "to the label) / (number of examples), as a Python float",
)
def check_accuracy(answer: object) -> None:
    run_cases(
        answer, reference_accuracy, _accuracy_cases(), expect_fraction, mistakes=ACCURACY_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch07.pad_batch


def reference_pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, max_length: int | None = None
) -> torch.Tensor:
    """Token id lists as one long tensor (B, L): each cut to its first ``max_length`` ids
    (when given), then right-padded with ``pad_id`` to L, the longest length after the cut."""
    cut = [list(ids[:max_length]) if max_length is not None else list(ids) for ids in sequences]
    length = max(len(ids) for ids in cut)
    return torch.tensor([ids + [pad_id] * (length - len(ids)) for ids in cut], dtype=torch.long)


def _padded(sequences, pad_id, length, *, left=False, keep_end=False) -> torch.Tensor:
    rows = []
    for ids in sequences:
        ids = list(ids)
        if len(ids) > length:
            ids = ids[-length:] if keep_end else ids[:length]
        padding = [pad_id] * (length - len(ids))
        rows.append(padding + ids if left else ids + padding)
    return torch.tensor(rows, dtype=torch.long)


def _longest(sequences: Sequence[Sequence[int]], max_length: int | None) -> int:
    longest = max(len(ids) for ids in sequences)
    return min(longest, max_length) if max_length is not None else longest


PAD_MISTAKES = (
    Mistake(
        "left_padding",
        lambda seqs, pad_id, max_length=None: _padded(
            seqs, pad_id, _longest(seqs, max_length), left=True),
        "pad on the RIGHT (ids + padding): the message then starts at position 0, as in "
        "pretraining",
    ),
    Mistake(
        "always_max_length",
        lambda seqs, pad_id, max_length=None: _padded(
            seqs, pad_id, max_length if max_length is not None else _longest(seqs, None)),
        "max_length only caps the length: when every sequence is shorter, pad to the longest "
        "sequence, min(longest, max_length)",
    ),
    Mistake(
        "keeps_the_end",
        lambda seqs, pad_id, max_length=None: _padded(
            seqs, pad_id, _longest(seqs, max_length), keep_end=True),
        "cut a long sequence to its FIRST max_length ids (ids[:max_length]), not its last ones",
    ),
    Mistake(
        "cut_one_short",
        lambda seqs, pad_id, max_length=None: _padded(
            seqs, pad_id, _longest(seqs, max_length - 1 if max_length is not None else None)),
        "off by one in the cut: ids[:max_length] keeps exactly max_length ids",
    ),
    Mistake(
        "max_length_ignored",
        lambda seqs, pad_id, max_length=None: _padded(seqs, pad_id, _longest(seqs, None)),
        "cut every sequence to its first max_length ids when max_length is given",
    ),
    Mistake(
        "zero_padding",
        lambda seqs, pad_id, max_length=None: _padded(seqs, 0, _longest(seqs, max_length)),
        "pad with pad_id, not with 0 (0 is a real token, '!' in GPT-2's vocabulary)",
    ),
)


def _pad_cases() -> list[LabelledArgs]:
    pad = GPT2_PAD_ID
    generator = seeded(77)
    cases: list[LabelledArgs] = [
        (f"sequences=[[1, 2, 3], [4], [5, 6]], pad_id={pad}", ([[1, 2, 3], [4], [5, 6]], pad)),
        ("sequences=[[1, 2, 3, 4, 5], [6, 7]], pad_id=0, max_length=3 (the first is cut)",
         ([[1, 2, 3, 4, 5], [6, 7]], 0, 3)),
        (f"sequences=[[1, 2], [3]], pad_id={pad}, max_length=10 (all are shorter)",
         ([[1, 2], [3]], pad, 10)),
        (f"sequences=[[9, 8, 7], [6, 5, 4]] (same length), pad_id={pad}",
         ([[9, 8, 7], [6, 5, 4]], pad)),
        (f"an empty message: sequences=[[1, 2], []], pad_id={pad}", ([[1, 2], []], pad)),
        ("one sequence: sequences=[[3, 1, 4, 1, 5]], pad_id=99, max_length=5",
         ([[3, 1, 4, 1, 5]], 99, 5)),
    ]
    for max_length in (None, 12):
        sequences = [
            torch.randint(0, pad, (randint(generator, 1, 20),), generator=generator).tolist()
            for _ in range(randint(generator, 2, 6))
        ]
        lengths = [len(ids) for ids in sequences]
        cases.append((
            f"random sequences of lengths {lengths}, pad_id={pad}, max_length={max_length}",
            (sequences, pad, max_length),
        ))
    return cases


@exercise(
    "ch07.pad_batch",
    title="Pad a batch of messages",
    hint="cut each list to ids[:max_length] when max_length is given, then append pad_id to "
    "each until it is as long as the longest; return torch.tensor(rows)",
)
def check_pad_batch(answer: object) -> None:
    run_cases(answer, reference_pad_batch, _pad_cases(), expect_equal, mistakes=PAD_MISTAKES)


# ----------------------------------------------------------------------------------------------
# ch07.confusion_matrix


def reference_confusion_matrix(
    labels: Sequence[int], predictions: Sequence[int], num_classes: int
) -> list[list[int]]:
    """``matrix[true][predicted]``: how many examples of each true class got each prediction,
    a list of ``num_classes`` lists of ``num_classes`` ints."""
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for label, prediction in zip(labels, predictions, strict=True):
        matrix[label][prediction] += 1
    return matrix


def _transposed(matrix: list[list[int]]) -> list[list[int]]:
    return [list(column) for column in zip(*matrix, strict=True)]


def _classes_present(labels, predictions, num_classes) -> list[list[int]]:
    present = max([*labels, *predictions], default=-1) + 1
    return reference_confusion_matrix(labels, predictions, present)


def _row_fractions(labels, predictions, num_classes) -> list[list[float]]:
    matrix = reference_confusion_matrix(labels, predictions, num_classes)
    return [[count / sum(row) if sum(row) else 0.0 for count in row] for row in matrix]


CONFUSION_MISTAKES = (
    Mistake(
        "transposed",
        lambda labels, predictions, n: _transposed(
            reference_confusion_matrix(labels, predictions, n)),
        "rows are the TRUE classes and columns the predictions: matrix[label][prediction] += 1",
    ),
    Mistake(
        "sized_by_the_classes_seen",
        _classes_present,
        "the matrix is num_classes x num_classes even when a class never appears",
    ),
    Mistake(
        "fractions",
        _row_fractions,
        "count examples (ints); do not divide the rows by their totals",
    ),
    Mistake(
        "diagonal_only",
        lambda labels, predictions, n: [
            [sum(1 for t, p in zip(labels, predictions, strict=True) if t == p == i)
             if i == j else 0 for j in range(n)] for i in range(n)],
        "count the wrong predictions too: every example adds 1 to matrix[label][prediction]",
    ),
)


def _confusion_cases() -> list[LabelledArgs]:
    generator = seeded(78)
    cases: list[LabelledArgs] = [
        ("labels=[0, 0, 0, 1, 1], predictions=[0, 1, 1, 0, 1], num_classes=2",
         ([0, 0, 0, 1, 1], [0, 1, 1, 0, 1], 2)),
        ("labels=[0, 1, 0, 0], predictions=[1, 1, 1, 0], num_classes=2",
         ([0, 1, 0, 0], [1, 1, 1, 0], 2)),
        ("a class never seen: labels=[0, 1, 1], predictions=[1, 1, 0], num_classes=3",
         ([0, 1, 1], [1, 1, 0], 3)),
        ("all right: labels=[2, 0, 1], predictions=[2, 0, 1], num_classes=3",
         ([2, 0, 1], [2, 0, 1], 3)),
        ("no examples: labels=[], predictions=[], num_classes=2", ([], [], 2)),
    ]
    for n, classes in ((20, 2), (40, 4)):
        labels = torch.randint(0, classes, (n,), generator=generator).tolist()
        predictions = torch.randint(0, classes, (n,), generator=generator).tolist()
        cases.append((f"labels={labels}, predictions={predictions}, num_classes={classes}",
                      (labels, predictions, classes)))
    return cases


@exercise(
    "ch07.confusion_matrix",
    title="The confusion matrix",
    hint="start from num_classes lists of num_classes zeros and add 1 to "
    "matrix[label][prediction] for every example",
)
def check_confusion_matrix(answer: object) -> None:
    run_cases(
        answer, reference_confusion_matrix, _confusion_cases(), expect_equal,
        mistakes=CONFUSION_MISTAKES,
    )


# ----------------------------------------------------------------------------------------------
# ch07.read_position_experiment: an experiment, the first token against the last


Messages = list[tuple[list[int], int]]  # (token ids, label) pairs


def _features(model: nn.Module, messages: Messages, position: str, *,
              logits: bool = False, train_mode: bool = False) -> torch.Tensor:
    """The final-norm vector (N, C) of every message at its first or last token, from a copy
    of ``model`` whose output layer is replaced by ``nn.Identity``."""
    encoder = copy.deepcopy(model)
    if not logits:
        encoder.lm_head = nn.Identity()
    encoder.train(train_mode)
    with torch.no_grad():
        return torch.stack([
            encoder(torch.tensor([ids]))[0, 0 if position == "first" else -1]
            for ids, _ in messages
        ])


def _nearest_mean_accuracy(train_features: torch.Tensor, train_labels: list[int],
                           test_features: torch.Tensor, test_labels: list[int]) -> float:
    classes = sorted(set(train_labels))
    labels = torch.tensor(train_labels)
    means = torch.stack([train_features[labels == c].mean(dim=0) for c in classes])  # (K, C)
    nearest = torch.cdist(test_features, means).argmin(dim=1)  # (N,)
    predicted = torch.tensor(classes)[nearest]
    return (predicted == torch.tensor(test_labels)).float().mean().item()


def _better(result: dict) -> str:
    """"first" or "last", whichever position's accuracy is higher; "tie" when equal."""
    if result["first"] == result["last"]:
        return "tie"
    return "first" if result["first"] > result["last"] else "last"


def _read_position_experiment(model: nn.Module, train: Messages, test: Messages, *,
                              logits: bool = False, train_mode: bool = False,
                              means_from: str = "train", scored_on: str = "test") -> dict:
    """The experiment of ``reference_read_position_experiment``, one thing wrong on request."""
    result = {}
    for position in ("first", "last"):
        sets = {"train": train, "test": test}
        features = {name: _features(model, messages, position, logits=logits,
                                    train_mode=train_mode)
                    for name, messages in sets.items()}
        result[position] = _nearest_mean_accuracy(
            features[means_from], [label for _, label in sets[means_from]],
            features[scored_on], [label for _, label in sets[scored_on]],
        )
    result["better"] = _better(result)
    return result


def reference_read_position_experiment(model: nn.Module, train: Messages, test: Messages
                                       ) -> dict:
    """Which position's vector tells the classes apart: each message's (unpadded token ids)
    final-norm vector at its first and at its last token, from a copy of ``model`` in
    evaluation mode with ``lm_head`` replaced by ``nn.Identity()``; the classifier is the
    nearest class mean of the training vectors; accuracy on ``test``. Returns ``{"first":
    accuracy, "last": accuracy, "better": "first", "last" or "tie"}``."""
    return _read_position_experiment(model, train, test)


def _padded_last(model: nn.Module, train: Messages, test: Messages) -> dict:
    """Reads position T - 1 of a batch right-padded to the longest message."""
    longest = max(len(ids) for ids, _ in train + test)

    def padded(messages: Messages) -> Messages:
        return [(ids + [0] * (longest - len(ids)), label) for ids, label in messages]

    result = {
        "first": _read_position_experiment(model, train, test)["first"],
        "last": _read_position_experiment(model, padded(train), padded(test))["last"],
    }
    result["better"] = _better(result)
    return result


READ_POSITION_MISTAKES = (
    Mistake(
        "padding_read",
        _padded_last,
        "the messages have different lengths: read each message at ITS last token (run each "
        "message alone, or read the last real position of a padded batch), not at the last "
        "position of a padded batch",
    ),
    Mistake(
        "logits_as_features",
        lambda model, train, test: _read_position_experiment(model, train, test, logits=True),
        "the features are the final-norm vectors (replace lm_head by nn.Identity() in a copy), "
        "not the next-token logits",
    ),
    Mistake(
        "means_from_the_test_set",
        lambda model, train, test: _read_position_experiment(model, train, test,
                                                             means_from="test"),
        "compute the class means from the TRAINING messages only, then classify the test "
        "messages",
    ),
    Mistake(
        "accuracy_on_the_training_set",
        lambda model, train, test: _read_position_experiment(model, train, test,
                                                             scored_on="train"),
        "measure the accuracy on the TEST messages, not on the training messages the means "
        "come from",
    ),
)
NONDETERMINISTIC_HINT = (
    "your numbers change from one run to the next: put the copy of the model in evaluation "
    "mode (.eval()), so that dropout is off while you read the vectors"
)


def _tiny_gpt(seed: int, vocab_size: int = 64) -> GPT:
    """A small random GPT with dropout, in training mode, built without touching the global
    random state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT(GPTConfig(vocab_size=vocab_size, context_length=16, n_layer=2, n_head=2,
                              n_embd=32, dropout=0.1))
    return model.train()


def _messages(generator: torch.Generator, count: int, where: str) -> Messages:
    """Random messages (tokens 10 to 63, 3 to 8 of them) whose label is marked by token 1
    (label 1) or 2 (label 0) at the ``where`` position: "first", "last" or "middle"."""
    messages = []
    for index in range(count):
        label = index % 2
        ids = torch.randint(10, 64, (randint(generator, 3, 8),), generator=generator).tolist()
        marker = 1 if label else 2
        if where == "first":
            ids[0] = marker
        elif where == "last":
            ids[-1] = marker
        else:
            ids[randint(generator, 1, len(ids) - 2)] = marker
        messages.append((ids, label))
    return messages


def _read_position_cases() -> list[LabelledArgs]:
    generator = seeded(80)
    cases: list[LabelledArgs] = []
    for where, seed in (("last", 1), ("first", 2), ("middle", 3)):
        train, test = _messages(generator, 24, where), _messages(generator, 16, where)
        cases.append((
            f"a random 2-layer GPT (vocabulary 64, dropout 0.1, in training mode), 24 training "
            f"and 16 test messages of 3 to 8 tokens whose class is marked at the {where} token",
            (_tiny_gpt(seed), train, test),
        ))
    return cases


def _probe_determinism(answer) -> str:
    """The evaluation-mode hint when two runs on the same inputs give different numbers."""
    model, train, test = _read_position_cases()[2][1]
    try:
        first, second = (answer(copy.deepcopy(model), train, test) for _ in range(2))
    except Exception:  # the case runner reports errors itself
        return ""
    if isinstance(first, dict) and isinstance(second, dict) and any(
        first.get(key) != second.get(key) for key in ("first", "last")
    ):
        return NONDETERMINISTIC_HINT
    return ""


@exercise(
    "ch07.read_position_experiment",
    title="Experiment: the first token or the last?",
    hint="for each position: the vectors of a copy of the model with lm_head = nn.Identity(), "
    "in eval mode, one message at a time ([0, 0] or [0, -1]); class means of the training "
    "vectors; each test message gets the class of the nearest mean (torch.cdist)",
    time_limit=60.0,
)
def check_read_position_experiment(answer: object) -> None:
    compare = measurement_compare(
        "better", _better, '"first" or "last", whichever accuracy is higher, "tie" when equal',
        atol=1e-6, rtol=0.0,
    )
    run_cases(
        answer, reference_read_position_experiment, _read_position_cases(), compare,
        mistakes=READ_POSITION_MISTAKES, probe=_probe_determinism,
    )
