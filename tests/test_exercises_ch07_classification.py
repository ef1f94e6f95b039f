"""The checkers of chapter 7.1 (classification) accept right answers and reject the typical
wrong ones."""

from __future__ import annotations

import copy

import pytest
import torch

from llmcourse.classification import (
    SpamDataset,
    classification_logits,
    metrics_from_predictions,
    read_positions,
    replace_head,
)
from llmcourse.exercises import check
from llmcourse.exercises.ch07_classification import (
    ACCURACY_MISTAKES,
    CONFUSION_MISTAKES,
    LAST_REAL_MISTAKES,
    LAST_TOKEN_MISTAKES,
    NONDETERMINISTIC_HINT,
    PAD_MISTAKES,
    READ_POSITION_MISTAKES,
    reference_accuracy,
    reference_confusion_matrix,
    reference_last_real_positions,
    reference_last_token_logits,
    reference_pad_batch,
    reference_read_position_experiment,
)
from llmcourse.model import GPT, GPTConfig

PAD = 50256


def run(exercise_id, answer):
    return check(exercise_id, answer, strict=False)


class ListTokenizer:
    """Encodes a text of space-separated integers as those integers."""

    def encode(self, text, *, disallowed_special=()):
        return [int(word) for word in text.split()]


# ----------------------------------------------------------------------------------------------
# The references agree with the package


def test_reference_last_token_logits_equals_the_package_read_position_last():
    config = GPTConfig(vocab_size=20, context_length=8, n_layer=1, n_head=2, n_embd=8)
    torch.manual_seed(0)
    model = GPT(config)
    replace_head(model, 3)
    ids = torch.tensor([[1, 2, 3, 19], [4, 5, 19, 19]])
    with torch.no_grad():
        expected = classification_logits(model, ids, "last", pad_id=19)
        got = reference_last_token_logits(model(ids))
    assert torch.equal(got, expected)


def test_reference_last_real_positions_equals_the_package():
    ids = torch.tensor([[7, 8, PAD, PAD], [9, PAD, PAD, PAD], [1, 2, 3, 4], [PAD] * 4])
    expected = read_positions(ids, "last_real", PAD)
    got = reference_last_real_positions(ids, PAD)
    assert got.tolist() == [1, 0, 3, 0]
    assert torch.equal(got, expected)


def test_reference_pad_batch_equals_the_spam_dataset():
    texts = ["1 2 3 4 5", "6 7", "8"]
    dataset = SpamDataset([(text, 0) for text in texts], ListTokenizer(), context_length=4)
    got = reference_pad_batch([[1, 2, 3, 4, 5], [6, 7], [8]], PAD, max_length=4)
    assert got.tolist() == [[1, 2, 3, 4], [6, 7, PAD, PAD], [8, PAD, PAD, PAD]]
    assert torch.equal(got, dataset.inputs)


def test_reference_accuracy_and_confusion_equal_the_package_metrics():
    logits = torch.tensor([[2.0, -1.0], [0.5, 1.5], [3.0, 0.0], [-2.0, -1.0], [0.0, 4.0]])
    labels = torch.tensor([0, 1, 1, 1, 0])
    predictions = logits.argmax(dim=-1).tolist()
    metrics = metrics_from_predictions(labels.tolist(), predictions, 2)
    assert reference_accuracy(logits, labels) == pytest.approx(metrics.accuracy, abs=1e-12)
    assert reference_accuracy(logits, labels) == pytest.approx(0.6)
    assert reference_confusion_matrix(labels.tolist(), predictions, 2) == metrics.confusion
    assert metrics.confusion == [[1, 1], [1, 2]]


# ----------------------------------------------------------------------------------------------
# Every recognised mistake gets its own hint


@pytest.mark.parametrize(
    ("exercise_id", "mistake"),
    [("ch07.last_token_logits", mistake) for mistake in LAST_TOKEN_MISTAKES]
    + [("ch07.last_real_positions", mistake) for mistake in LAST_REAL_MISTAKES]
    + [("ch07.accuracy", mistake) for mistake in ACCURACY_MISTAKES]
    + [("ch07.pad_batch", mistake) for mistake in PAD_MISTAKES]
    + [("ch07.confusion_matrix", mistake) for mistake in CONFUSION_MISTAKES],
    ids=lambda value: getattr(value, "name", value),
)
def test_each_mistake_is_rejected_with_its_hint(exercise_id, mistake):
    result = run(exercise_id, mistake.answer)
    assert result.status == "failed"
    assert result.hint == mistake.hint


# ----------------------------------------------------------------------------------------------
# ch07.last_token_logits


def test_last_token_logits_accepts_right_answers():
    def with_select(logits):
        return logits.select(1, logits.shape[1] - 1)

    assert run("ch07.last_token_logits", reference_last_token_logits).status == "passed"
    result = run("ch07.last_token_logits", with_select)
    assert result.status == "passed"
    assert result.cases == 6


def test_last_token_logits_rejects_the_first_token():
    result = run("ch07.last_token_logits", lambda logits: logits[:, 0, :])
    assert result.status == "failed"
    assert "torch.arange(24.).reshape(2, 4, 3)" in result.message
    assert "expected 9, got 0" in result.message
    assert "FIRST position" in result.hint


def test_last_token_logits_rejects_mean_pooling():
    result = run("ch07.last_token_logits", lambda logits: logits.mean(dim=1))
    assert result.status == "failed"
    assert "you average over the positions" in result.hint


def test_last_token_logits_names_a_wrong_shape():
    result = run("ch07.last_token_logits", lambda logits: logits[:, -1:, :])
    assert result.status == "failed"
    assert "got shape (2, 1, 3) but expected (2, 3)" in result.message


# ----------------------------------------------------------------------------------------------
# ch07.last_real_positions


def test_last_real_positions_accepts_right_answers():
    def by_counting(ids, pad_id):
        return ((ids != pad_id).sum(dim=1) - 1).clamp(min=0)

    def with_a_loop(ids, pad_id):
        positions = []
        for row in ids.tolist():
            real = [index for index, token in enumerate(row) if token != pad_id]
            positions.append(real[-1] if real else 0)
        return torch.tensor(positions)

    for answer in (reference_last_real_positions, by_counting, with_a_loop):
        result = run("ch07.last_real_positions", answer)
        assert result.status == "passed", result.message
    assert result.cases == 7


def test_last_real_positions_rejects_off_by_one():
    result = run("ch07.last_real_positions", lambda ids, pad_id: (ids != pad_id).sum(dim=1))
    assert result.status == "failed"
    assert f"pad_id={PAD}" in result.message
    assert "at index (0,) expected 2, got 3" in result.message
    assert "off by one" in result.hint


def test_last_real_positions_rejects_counting_pads():
    result = run("ch07.last_real_positions", lambda ids, pad_id: (ids == pad_id).sum(dim=1))
    assert result.status == "failed"
    assert "you count the padding tokens" in result.hint


def test_last_real_positions_rejects_float_positions():
    result = run(
        "ch07.last_real_positions",
        lambda ids, pad_id: reference_last_real_positions(ids, pad_id).float(),
    )
    assert result.status == "failed"
    assert "but expected torch.int64" in result.message


# ----------------------------------------------------------------------------------------------
# ch07.accuracy


def test_accuracy_accepts_right_answers():
    def with_mean(logits, labels):
        return (logits.argmax(-1) == labels).float().mean().item()

    for answer in (reference_accuracy, with_mean):
        result = run("ch07.accuracy", answer)
        assert result.status == "passed", result.message
    assert result.cases == 7


def test_accuracy_rejects_a_tensor():
    result = run("ch07.accuracy", lambda logits, labels: (logits.argmax(-1) == labels).float()
                 .mean())
    assert result.status == "failed"
    assert "expected a Python float" in result.message
    assert ".item()" in result.message


def test_accuracy_rejects_a_percentage():
    result = run("ch07.accuracy", lambda logits, labels: 100 * reference_accuracy(logits, labels))
    assert result.status == "failed"
    assert "not a percentage" in result.hint


def test_accuracy_rejects_the_argmax_over_the_examples():
    result = run("ch07.accuracy", lambda logits, labels: (logits.argmax(dim=0) == labels)
                 .float().mean().item())
    assert result.status == "failed"
    assert "over the classes, the last dimension" in result.hint


# ----------------------------------------------------------------------------------------------
# ch07.pad_batch


def test_pad_batch_accepts_right_answers():
    def with_a_loop(sequences, pad_id, max_length=None):
        if max_length is not None:
            sequences = [ids[:max_length] for ids in sequences]
        longest = max(len(ids) for ids in sequences)
        rows = [list(ids) + [pad_id] * (longest - len(ids)) for ids in sequences]
        return torch.tensor(rows)

    for answer in (reference_pad_batch, with_a_loop):
        result = run("ch07.pad_batch", answer)
        assert result.status == "passed", result.message
    assert result.cases == 8


def test_pad_batch_rejects_padding_the_callers_lists_in_place():
    def pads_in_place(sequences, pad_id, max_length=None):
        if max_length is not None:
            sequences = [ids[:max_length] for ids in sequences]
        longest = max(len(ids) for ids in sequences)
        for ids in sequences:
            ids.extend([pad_id] * (longest - len(ids)))
        return torch.tensor(sequences)

    result = run("ch07.pad_batch", pads_in_place)
    assert result.status == "failed"
    assert result.hint == (
        "your function changed its argument `sequences` in place; work on a copy"
    )


def test_pad_batch_rejects_left_padding():
    def left(sequences, pad_id, max_length=None):
        longest = max(len(ids) for ids in sequences)
        return torch.tensor([[pad_id] * (longest - len(ids)) + ids for ids in sequences])

    result = run("ch07.pad_batch", left)
    assert result.status == "failed"
    assert "sequences=[[1, 2, 3], [4], [5, 6]]" in result.message
    assert "pad on the RIGHT" in result.hint


def test_pad_batch_rejects_cutting_the_start():
    def keeps_the_end(sequences, pad_id, max_length=None):
        if max_length is not None:
            sequences = [ids[-max_length:] for ids in sequences]
        return reference_pad_batch(sequences, pad_id)

    result = run("ch07.pad_batch", keeps_the_end)
    assert result.status == "failed"
    assert "max_length=3" in result.message
    assert "FIRST max_length ids" in result.hint


def test_pad_batch_rejects_padding_to_max_length():
    def to_max_length(sequences, pad_id, max_length=None):
        length = max_length or max(len(ids) for ids in sequences)
        return torch.tensor([ids[:length] + [pad_id] * (length - len(ids[:length]))
                             for ids in sequences])

    result = run("ch07.pad_batch", to_max_length)
    assert result.status == "failed"
    assert "max_length=10 (all are shorter)" in result.message
    assert "got shape (2, 10) but expected (2, 2)" in result.message
    assert "only caps the length" in result.hint


def test_pad_batch_rejects_a_list():
    result = run("ch07.pad_batch", lambda sequences, pad_id, max_length=None:
                 reference_pad_batch(sequences, pad_id, max_length).tolist())
    assert result.status == "failed"
    assert "expected a tensor, got list" in result.message


# ----------------------------------------------------------------------------------------------
# ch07.confusion_matrix


def test_confusion_matrix_accepts_right_answers():
    def with_torch(labels, predictions, num_classes):
        matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
        for label, prediction in zip(labels, predictions, strict=True):
            matrix[label, prediction] += 1
        return matrix.tolist()

    for answer in (reference_confusion_matrix, with_torch):
        result = run("ch07.confusion_matrix", answer)
        assert result.status == "passed", result.message
    assert result.cases == 7


def test_confusion_matrix_rejects_the_transpose():
    def transposed(labels, predictions, num_classes):
        return reference_confusion_matrix(predictions, labels, num_classes)

    result = run("ch07.confusion_matrix", transposed)
    assert result.status == "failed"
    assert "labels=[0, 0, 0, 1, 1], predictions=[0, 1, 1, 0, 1]" in result.message
    assert "item 0: item 1: expected 2, got 1" in result.message
    assert "rows are the TRUE classes" in result.hint


def test_confusion_matrix_rejects_a_matrix_of_the_classes_seen():
    def classes_seen(labels, predictions, num_classes):
        return reference_confusion_matrix(labels, predictions, max(labels + predictions) + 1)

    result = run("ch07.confusion_matrix", classes_seen)
    assert result.status == "failed"
    assert "a class never seen" in result.message
    assert "even when a class never appears" in result.hint


# ----------------------------------------------------------------------------------------------
# ch07.read_position_experiment: an experiment


def read_positions_in_a_batch(model, train, test):
    """Another right answer: one padded batch, a forward hook on the final norm for the
    vectors, the last REAL position read, the class means and distances written out."""
    model = copy.deepcopy(model).eval()
    captured = []
    model.transformer.ln_f.register_forward_hook(
        lambda module, args, output: captured.append(output))

    def vectors(messages, position):
        longest = max(len(ids) for ids, _ in messages)
        ids = torch.tensor([ids + [0] * (longest - len(ids)) for ids, _ in messages])
        captured.clear()
        with torch.no_grad():
            model(ids)
        where = torch.zeros(len(messages), dtype=torch.long) if position == "first" else \
            torch.tensor([len(ids) - 1 for ids, _ in messages])
        return captured[0][torch.arange(len(messages)), where]

    result = {}
    for position in ("first", "last"):
        train_vectors, test_vectors = vectors(train, position), vectors(test, position)
        labels = torch.tensor([label for _, label in train])
        means = {c: train_vectors[labels == c].mean(0) for c in sorted(set(labels.tolist()))}
        right = 0
        for vector, (_, label) in zip(test_vectors, test, strict=True):
            nearest = min(means, key=lambda c: float(((vector - means[c]) ** 2).sum()))
            right += nearest == label
        result[position] = right / len(test)
    if result["first"] > result["last"]:
        result["better"] = "first"
    elif result["last"] > result["first"]:
        result["better"] = "last"
    else:
        result["better"] = "tie"
    return result


def test_read_position_experiment_accepts_the_reference_and_another_right_answer():
    assert run("ch07.read_position_experiment", reference_read_position_experiment).passed
    result = run("ch07.read_position_experiment", read_positions_in_a_batch)
    assert result.status == "passed", result.message_with_hint


@pytest.mark.parametrize("mistake", READ_POSITION_MISTAKES, ids=lambda mistake: mistake.name)
def test_read_position_experiment_rejects_a_typical_mistake_with_its_hint(mistake):
    result = run("ch07.read_position_experiment", mistake.answer)
    assert result.status == "failed"
    assert result.hint == mistake.hint


def test_read_position_experiment_rejects_a_typed_in_conclusion():
    def always_last(model, train, test):
        return {**reference_read_position_experiment(model, train, test), "better": "last"}

    result = run("ch07.read_position_experiment", always_last)
    assert result.status == "failed"
    assert "compute 'better' from your measurements" in result.hint


def test_read_position_experiment_asks_for_eval_mode_when_dropout_is_on():
    def dropout_on(model, train, test):
        encoder = copy.deepcopy(model)
        encoder.lm_head = torch.nn.Identity()  # left in training mode
        result = {}
        for position, index in (("first", 0), ("last", -1)):
            with torch.no_grad():
                vectors = {name: torch.stack([encoder(torch.tensor([ids]))[0, index]
                                              for ids, _ in messages])
                           for name, messages in (("train", train), ("test", test))}
            labels = torch.tensor([label for _, label in train])
            means = torch.stack([vectors["train"][labels == c].mean(0) for c in (0, 1)])
            predicted = torch.cdist(vectors["test"], means).argmin(1)
            truth = torch.tensor([label for _, label in test])
            result[position] = (predicted == truth).float().mean().item()
        result["better"] = "first" if result["first"] > result["last"] else (
            "last" if result["last"] > result["first"] else "tie")
        return result

    result = run("ch07.read_position_experiment", dropout_on)
    assert result.status == "failed"
    assert result.hint == NONDETERMINISTIC_HINT


def test_read_position_experiment_rejects_changing_the_callers_model():
    def in_place(model, train, test):
        model.lm_head = torch.nn.Identity()
        return reference_read_position_experiment(model, train, test)

    result = run("ch07.read_position_experiment", in_place)
    assert result.status == "failed"
    assert "changed its argument `model` in place" in result.hint
