"""Fine-tuning a GPT to classify text: the SMS spam filter of the book's chapter 6.

The recipe:

1. ``load_sms_spam`` reads the UCI SMS Spam Collection (label 1 = spam), ``balanced_split``
   keeps as many ham as spam messages and splits them 70/10/20.
2. ``SpamDataset`` turns messages into token ids of one length, padded with ``<|endoftext|>``.
3. ``replace_head`` swaps the 50,257-way output layer for a fresh ``num_classes``-way one;
   ``freeze_for`` chooses what trains ("head", "last_block", "full" or "lora").
4. ``train_classifier`` minimises the cross-entropy of the logits read at one position of each
   sequence, with the course's training loop (through ``ClassificationModel``); ``evaluate``
   reports accuracy, precision, recall, F1 and the confusion matrix.
5. ``classify`` labels new text; ``save_classifier``/``load_classifier`` keep the result.

Which position to read: in a causal model only the last position has seen the whole message.
The book reads position -1 (``read_position="last"``), which for a short message in a padded
batch is a padding token; the model still learns the task, because the padding tokens attend to
the message. ``"last_real"`` reads the last token of the message itself, the position that
summarises exactly the message and nothing else.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from llmcourse import data_files
from llmcourse.checkpoints import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    check_config_unchanged,
    read_config,
    unique_tensors,
    weights_metadata,
    write_config,
)
from llmcourse.errors import CheckpointError, ConfigError, DataError, InputError
from llmcourse.lora_models import DEFAULT_TARGETS, ParameterReport, apply_lora, merged_state_dict
from llmcourse.lora_models import trainable_parameter_report as parameter_report
from llmcourse.model import GPT
from llmcourse.model_state import eval_mode, model_device
from llmcourse.resume import preserved_rng
from llmcourse.saving import check_destination, recover, staged_directory
from llmcourse.splits import Split
from llmcourse.tokenizers import GPT2_EOT_ID, Tokenizer, gpt2_tokenizer
from llmcourse.tokenizers.files import (
    TOKENIZER_FILE,
    end_of_text_id,
    load_tokenizer,
    save_tokenizer,
)
from llmcourse.training import EvalRecord, StepState, TrainingHistory, fine_tuning_config, train

Example = tuple[str, int]  # (message text, class id)
LABEL_IDS = {"ham": 0, "spam": 1}
CLASS_NAMES = ("not spam", "spam")  # what classify() answers for class 0 and class 1
READ_POSITIONS = ("last", "last_real")
STRATEGIES = ("head", "last_block", "full", "lora")

CLASSIFIER_FILE = "classifier.json"
CLASSIFIER_FILES = (CONFIG_FILE, CLASSIFIER_FILE, TOKENIZER_FILE, WEIGHTS_FILE)
CLASSIFIER_FORMAT = "llmcourse-classifier"


# ---------------------------------------------------------------------------------------------
# Data


def load_sms_spam(path: str | Path | None = None) -> list[Example]:
    """The SMS Spam Collection as (text, label) pairs, label 1 for spam and 0 for ham.

    ``path`` defaults to the course's copy (``llmcourse.data_files.fetch("sms-spam")``). Parsed as
    the book's ``pd.read_csv(sep="\\t", header=None)`` does: a field that starts with ``"`` is
    quoted, so it loses its quotes and may run over several lines. That joins three lines into
    one message and gives the book's 5,572 messages (4,825 ham, 747 spam) of the file's 5,574
    lines (reading every line as one message, ``quoting=csv.QUOTE_NONE``, would give 5,574).
    """
    path = Path(path) if path is not None else data_files.fetch("sms-spam", quiet=True)
    return parse_sms_spam(path.read_text(encoding="utf-8"), source=str(path))


def parse_sms_spam(text: str, source: str = "<text>") -> list[Example]:
    """Parse ``label<TAB>message`` lines (see ``load_sms_spam``); errors name the line."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    examples = []
    start = line = 1
    for fields in reader:
        if len(fields) != 2:
            raise DataError(
                f"{source}, line {line}: expected 'label<TAB>message', found "
                f"{_describe(fields)}; fix or remove that line"
            )
        label, message = fields
        if label not in LABEL_IDS:
            raise DataError(
                f"{source}, line {line}: unknown label {label!r}; expected "
                f"{' or '.join(map(repr, LABEL_IDS))}"
            )
        examples.append((message, LABEL_IDS[label]))
        start, line = line, reader.line_num + 1
    if examples and examples[-1][0].endswith(("\n", "\r")):
        raise DataError(
            f"{source}, line {start}: the quote that opens this message is never closed, so the "
            'rest of the file was read as one message; close it with " or remove it'
        )
    return examples


def _describe(fields: list[str], limit: int = 60) -> str:
    if not fields:
        return "an empty line"
    joined = "\t".join(fields)
    shown = repr(joined if len(joined) <= limit else joined[:limit] + "...")
    return f"no tab in {shown}" if len(fields) == 1 else f"{len(fields)} fields in {shown}"


def balanced_split(
    rows: Sequence[Example],
    seed: int = 123,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
) -> Split:
    """Undersample every class to the size of the smallest, shuffle, split by ``fractions``.

    For the SMS data: 747 of the 4,825 ham messages are drawn at random, joined by the 747 spam
    messages (1,494 in all), shuffled, and split into int(0.7 * 1494) = 1,045 training,
    int(0.1 * 1494) = 149 validation and the remaining 300 test messages, the book's sizes.
    The draws use Python's ``random.Random(seed)``, not pandas' ``sample(random_state=123)``,
    so which messages land in which part differs from the book's split (the sizes do not).
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ConfigError(
            f"fractions must be three non-negative numbers (train, validation, test) that sum "
            f"to 1, got {fractions}"
        )
    if not rows:
        raise DataError("no examples to split")
    rng = random.Random(seed)
    by_class: dict[int, list[Example]] = {}
    for row in rows:
        by_class.setdefault(row[1], []).append(row)
    if len(by_class) < 2:
        raise DataError(
            f"the data holds one class only ({class_counts(rows)}): a classifier needs examples "
            "of both ham and spam; check the data file (lines 'ham<TAB>text' and "
            "'spam<TAB>text')"
        )
    smallest = min(len(members) for members in by_class.values())
    balanced = []
    for label in sorted(by_class):
        members = by_class[label]
        balanced += rng.sample(members, smallest) if len(members) > smallest else members
    rng.shuffle(balanced)
    train_end = int(len(balanced) * fractions[0])
    validation_end = train_end + int(len(balanced) * fractions[1])
    train, validation = balanced[:train_end], balanced[train_end:validation_end]
    return Split(train, validation, balanced[validation_end:])


def class_counts(rows: Sequence[Example]) -> str:
    """The number of examples of each class, in words: "40 ham, 0 spam"."""
    counts = {label: 0 for label in LABEL_IDS.values()}
    for _, label in rows:
        counts[label] = counts.get(label, 0) + 1
    names = {label: name for name, label in LABEL_IDS.items()}
    return ", ".join(f"{count} {names.get(label, f'of class {label}')}"
                     for label, count in sorted(counts.items()))


def encode_message(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text``; a literal "<|endoftext|>" in a message is ordinary text."""
    return tokenizer.encode(text, disallowed_special=())


class SpamDataset(Dataset):
    """Messages as token ids of one length ``max_length``, with their labels.

    Each message is cut to its first ``max_length`` tokens and padded on the right with
    ``pad_id`` (by default the tokenizer's ``<|endoftext|>``). ``max_length`` defaults to the
    longest message, capped at ``context_length`` when given; give the training set's
    ``max_length`` to the validation and test sets so all three look alike. Items are
    (ids (max_length,), label ()).
    """

    def __init__(
        self,
        rows: Sequence[Example],
        tokenizer: Tokenizer,
        max_length: int | None = None,
        pad_id: int | None = None,
        context_length: int | None = None,
    ):
        if pad_id is None:
            pad_id = end_of_text_id(tokenizer, default=GPT2_EOT_ID)
        if not rows:
            raise DataError("a SpamDataset needs at least one message")
        encoded = [encode_message(tokenizer, text) for text, _ in rows]
        if max_length is None:
            max_length = max(len(ids) for ids in encoded)
            if context_length is not None:
                max_length = min(max_length, context_length)
        elif context_length is not None and max_length > context_length:
            raise ConfigError(
                f"max_length {max_length} is longer than the model's context of "
                f"{context_length} tokens; use at most {context_length}"
            )
        if max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {max_length}")
        self.max_length = max_length
        self.pad_id = pad_id
        self.inputs = torch.tensor([pad(ids, max_length, pad_id) for ids in encoded])  # (N, L)
        self.labels = torch.tensor([label for _, label in rows])  # (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.labels[index]


def pad(ids: Sequence[int], length: int, pad_id: int) -> list[int]:
    """``ids`` cut to ``length`` and right-padded with ``pad_id`` to exactly ``length``."""
    ids = list(ids[:length])
    return ids + [pad_id] * (length - len(ids))


def make_loaders(
    split: Split,
    tokenizer: Tokenizer,
    batch_size: int = 8,
    context_length: int | None = None,
    seed: int = 123,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train, validation and test loaders as in the book: the training loader shuffles (with
    its own generator seeded by ``seed``) and drops a last incomplete batch; validation and test
    use the training set's ``max_length``."""
    if len({label for _, label in split.train}) < 2:
        raise DataError(
            f"the training part holds one class only ({class_counts(split.train)}): the "
            "classifier would learn to give that answer whatever the text; use more examples "
            "(--max-examples) or a split with both classes"
        )
    train = SpamDataset(split.train, tokenizer, context_length=context_length)
    if len(train) < batch_size:
        raise ConfigError(
            f"{len(train)} training examples make no full batch of {batch_size}; use more "
            "examples or a smaller batch size"
        )
    validation, test = (
        SpamDataset(part, tokenizer, max_length=train.max_length)
        for part in (split.validation, split.test)
    )
    generator = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size, shuffle=True, drop_last=True, generator=generator),
        DataLoader(validation, batch_size),
        DataLoader(test, batch_size),
    )


# ---------------------------------------------------------------------------------------------
# The model


def replace_head(model: GPT, num_classes: int = 2) -> nn.Linear:
    """Give ``model`` a fresh ``nn.Linear(n_embd, num_classes)`` output layer; returns it.

    The old output layer may share its matrix with the token embedding (tied weights); the new
    head has its own, so training it leaves ``transformer.wte`` untouched. The head is created
    on the device and with the dtype of the embedding, with PyTorch's default initialisation
    (seed torch for a reproducible head).
    """
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    embedding = model.transformer.wte.weight
    model.lm_head = nn.Linear(
        model.config.n_embd, num_classes, device=embedding.device, dtype=embedding.dtype
    )
    return model.lm_head


def read_positions(ids: torch.Tensor, read_position: str, pad_id: int) -> torch.Tensor:
    """Which position of each right-padded row of ``ids`` (B, T) to classify from: (B,).

    ``"last"``: position T - 1 for every row (the book's choice, a padding token when the row
    is padded). ``"last_real"``: the last position that is not ``pad_id`` (0 for a row of
    padding only).
    """
    _check_read_position(read_position)
    batch, length = ids.shape
    if read_position == "last":
        return torch.full((batch,), length - 1, dtype=torch.long, device=ids.device)
    positions = torch.arange(length, device=ids.device)
    return ((ids != pad_id) * positions).amax(dim=1)


def _check_read_position(read_position: str) -> None:
    if read_position not in READ_POSITIONS:
        raise ConfigError(
            f"read_position must be one of {READ_POSITIONS}, got {read_position!r}"
        )


def classification_logits(
    model: GPT, ids: torch.Tensor, read_position: str = "last", pad_id: int = GPT2_EOT_ID
) -> torch.Tensor:
    """Class logits (B, num_classes) of token ids (B, T), read at ``read_position``."""
    logits = model(ids)  # (B, T, num_classes)
    rows = torch.arange(ids.size(0), device=ids.device)
    return logits[rows, read_positions(ids, read_position, pad_id)]


def freeze_for(
    model: GPT, strategy: str, *, rank: int = 16, alpha: float = 16, dropout: float = 0.0
) -> ParameterReport:
    """Choose which parameters train; returns the parameter report.

    - ``"head"``: the classification head only;
    - ``"last_block"``: the head, the last transformer block and the final LayerNorm (the
      book's recipe);
    - ``"full"``: everything;
    - ``"lora"``: LoRA adapters (``rank``, ``alpha``, ``dropout``) on every attention and MLP
      linear layer, plus the whole head.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if model.lm_head.out_features == model.config.vocab_size:
        raise ConfigError(
            "the model still has its language-model head; call replace_head(model, "
            "num_classes) before choosing what to train"
        )
    model.requires_grad_(strategy == "full")
    if strategy == "lora":
        apply_lora(model, rank, alpha, DEFAULT_TARGETS, dropout)
    elif strategy == "last_block":
        model.transformer.h[-1].requires_grad_(True)
        model.transformer.ln_f.requires_grad_(True)
    model.lm_head.requires_grad_(True)
    return parameter_report(model)


# ---------------------------------------------------------------------------------------------
# Metrics


@dataclass
class ClassificationMetrics:
    """How well predictions match labels.

    ``confusion[i][j]`` counts examples of true class i predicted as j. ``precision``,
    ``recall`` and ``f1`` are those of ``positive_class`` (spam), 0 where undefined (no such
    predictions or labels). ``balanced_accuracy`` is the mean recall over the classes present.
    ``loss`` is the mean cross-entropy per example (nats; NaN when not measured).
    """

    accuracy: float
    balanced_accuracy: float
    precision: float
    recall: float
    f1: float
    confusion: list[list[int]]
    loss: float = float("nan")
    positive_class: int = 1

    @property
    def examples(self) -> int:
        return sum(map(sum, self.confusion))

    def __str__(self) -> str:
        return (
            f"accuracy {self.accuracy:.2%} (balanced {self.balanced_accuracy:.2%}), "
            f"precision {self.precision:.2%}, recall {self.recall:.2%}, F1 {self.f1:.3f}, "
            f"loss {self.loss:.3f} on {self.examples} examples; confusion {self.confusion}"
        )


def metrics_from_predictions(
    labels: Sequence[int],
    predictions: Sequence[int],
    num_classes: int = 2,
    *,
    loss: float = float("nan"),
    positive_class: int = 1,
) -> ClassificationMetrics:
    """``ClassificationMetrics`` of predicted against true class ids."""
    if len(labels) != len(predictions) or not labels:
        raise InputError(
            f"need as many predictions as labels, at least one: got {len(predictions)} "
            f"predictions for {len(labels)} labels"
        )
    confusion = [[0] * num_classes for _ in range(num_classes)]
    for label, prediction in zip(labels, predictions, strict=True):
        confusion[int(label)][int(prediction)] += 1
    correct = sum(confusion[c][c] for c in range(num_classes))
    recalls = [confusion[c][c] / sum(confusion[c]) for c in range(num_classes) if sum(confusion[c])]
    true_positives = confusion[positive_class][positive_class]
    predicted_positive = sum(row[positive_class] for row in confusion)
    precision = _ratio(true_positives, predicted_positive)
    recall = _ratio(true_positives, sum(confusion[positive_class]))
    return ClassificationMetrics(
        accuracy=correct / len(labels),
        balanced_accuracy=sum(recalls) / len(recalls),
        precision=precision,
        recall=recall,
        f1=_ratio(2 * precision * recall, precision + recall),
        confusion=confusion,
        loss=loss,
        positive_class=positive_class,
    )


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _padding_of(loader: object, pad_id: int | None) -> int:
    """``pad_id`` if given, else the padding id of the loader's dataset, else GPT-2's."""
    if pad_id is not None:
        return pad_id
    return getattr(getattr(loader, "dataset", None), "pad_id", GPT2_EOT_ID)


@torch.no_grad()
def evaluate(
    model: GPT,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    read_position: str = "last",
    pad_id: int | None = None,
    max_batches: int | None = None,
    positive_class: int = 1,
) -> ClassificationMetrics:
    """Metrics of the model on the first ``max_batches`` batches of ``loader`` (all if None),
    in evaluation mode (dropout off); the model's mode is restored afterwards. ``pad_id``
    defaults to the padding of the loader's ``SpamDataset``."""
    pad_id = _padding_of(loader, pad_id)
    device = model_device(model)
    labels: list[int] = []
    predictions: list[int] = []
    total_loss = 0.0
    with eval_mode(model):
        for index, (inputs, targets) in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            targets = targets.to(device)
            logits = classification_logits(model, inputs.to(device), read_position, pad_id)
            total_loss += F.cross_entropy(logits.float(), targets, reduction="sum").item()
            labels += targets.tolist()
            predictions += logits.argmax(dim=-1).tolist()
    if not labels:
        raise InputError("the loader yielded no batches to evaluate")
    return metrics_from_predictions(
        labels,
        predictions,
        model.lm_head.out_features,
        loss=total_loss / len(labels),
        positive_class=positive_class,
    )


# ---------------------------------------------------------------------------------------------
# Training


class ClassificationModel(nn.Module):
    """A GPT with a classification head, read as a classifier: ``forward(ids, labels)`` gives
    the class logits (B, num_classes) read at ``read_position`` and, with labels (B,), their
    mean cross-entropy (nats per message). That is the ``model(inputs, targets) -> (logits,
    loss)`` form the course's training loop (``llmcourse.training.train``) trains and evaluates,
    so classification fine-tuning uses the same loop as pretraining. The wrapped model is
    ``gpt``; the wrapper adds no parameters."""

    def __init__(self, gpt: GPT, read_position: str = "last", pad_id: int = GPT2_EOT_ID):
        super().__init__()
        _check_read_position(read_position)
        self.gpt = gpt
        self.config = gpt.config
        self.read_position = read_position
        self.pad_id = pad_id

    def forward(
        self, ids: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits = classification_logits(self.gpt, ids, self.read_position, self.pad_id)
        if labels is None:
            return logits
        return logits, F.cross_entropy(logits.float(), labels)


def train_classifier(
    model: GPT,
    train_loader: DataLoader,
    val_loader: DataLoader,
    epochs: int,
    *,
    read_position: str = "last",
    pad_id: int | None = None,
    callbacks: Iterable[object] = (),
    **settings: Any,
) -> TrainingHistory:
    """Fine-tune the trainable parameters of ``model`` (chosen with ``freeze_for``) on the
    cross-entropy of ``classification_logits``, with the course's training loop and the
    settings of ``training.fine_tuning_config`` (AdamW at a constant learning rate of 5e-5),
    except that the losses (nats per message) are measured every 50 steps. ``settings``
    override any ``TrainingConfig`` field (``learning_rate``, ``eval_every``, ``eval_batches``,
    ``seed`` ...). For the accuracy after each epoch pass an ``EpochAccuracy`` callback.
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("no parameter is trainable; choose what trains with freeze_for")
    config = fine_tuning_config(epochs, **{"eval_every": 50, **settings})
    classifier = ClassificationModel(model, read_position, _padding_of(train_loader, pad_id))
    return train(classifier, train_loader, val_loader, config, callbacks=callbacks)


@dataclass(frozen=True)
class AccuracyRecord:
    """Accuracies after epoch ``epoch`` (optimizer step ``step``), on a few batches."""

    epoch: int
    step: int
    train_accuracy: float
    val_accuracy: float


class EpochAccuracy:
    """A training callback that measures the accuracy on ``eval_batches`` batches of the
    training and validation loaders after every epoch, into ``records``. With ``verbose`` it
    prints each record, with the latest loss estimates of the run. The loaders' random state is
    left as it was, so measuring does not change the batch order of the run."""

    def __init__(
        self,
        model: GPT,
        train_loader: DataLoader,
        val_loader: DataLoader,
        *,
        eval_batches: int | None = 5,
        read_position: str = "last",
        pad_id: int | None = None,
        verbose: bool = False,
    ):
        _check_read_position(read_position)
        self.model = model
        self.loaders = (train_loader, val_loader)
        self.settings = dict(
            read_position=read_position,
            pad_id=_padding_of(train_loader, pad_id),
            max_batches=eval_batches,
        )
        self.verbose = verbose
        self.records: list[AccuracyRecord] = []
        self.last_losses: EvalRecord | None = None

    def on_eval(self, record: EvalRecord) -> None:
        self.last_losses = record

    def on_step(self, state: StepState) -> None:
        if state.step % len(self.loaders[0]):
            return
        with preserved_rng(*self.loaders):
            train_accuracy, val_accuracy = (
                evaluate(self.model, loader, **self.settings).accuracy for loader in self.loaders
            )
        record = AccuracyRecord(
            state.step // len(self.loaders[0]), state.step, train_accuracy, val_accuracy
        )
        self.records.append(record)
        if self.verbose:
            losses = ""
            if self.last_losses is not None:
                losses = (f", train loss {self.last_losses.train_loss:.3f}, "
                          f"val loss {self.last_losses.val_loss:.3f}")
            print(f"epoch {record.epoch} (step {record.step}): train accuracy "
                  f"{record.train_accuracy:.2%}, val accuracy {record.val_accuracy:.2%}{losses}")


# ---------------------------------------------------------------------------------------------
# Using and keeping a classifier


@torch.no_grad()
def classify(
    model: GPT,
    tokenizer: Tokenizer,
    text: str,
    max_length: int | None = None,
    *,
    read_position: str = "last",
    pad_id: int | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
) -> tuple[str, float]:
    """The predicted class name of ``text`` and its probability.

    As in training, the text is cut to ``max_length`` tokens (and to the model's context) and
    padded to ``max_length`` with ``pad_id`` (default: the tokenizer's ``<|endoftext|>``);
    without ``max_length`` it is only cut to the context.
    """
    if pad_id is None:
        pad_id = end_of_text_id(tokenizer, default=GPT2_EOT_ID)
    context = model.config.context_length
    length = min(max_length, context) if max_length is not None else context
    ids = encode_message(tokenizer, text)[:length]
    if max_length is not None:
        ids = pad(ids, length, pad_id)
    if not ids:
        raise InputError("cannot classify an empty text without max_length (padding)")
    with eval_mode(model):
        inputs = torch.tensor([ids], device=model_device(model))
        logits = classification_logits(model, inputs, read_position, pad_id)[0]
    probabilities = torch.softmax(logits.float(), dim=-1)
    predicted = int(probabilities.argmax())
    return class_names[predicted], probabilities[predicted].item()


@dataclass
class Classifier:
    """A fine-tuned classification model with the settings it was trained with."""

    model: GPT
    max_length: int | None
    read_position: str = "last"
    class_names: tuple[str, ...] = CLASS_NAMES
    pad_id: int | None = None  # None: the tokenizer's <|endoftext|>
    tokenizer: tiktoken.Encoding | None = None  # the base model's; None: GPT-2's

    def classify(self, text: str, tokenizer: Tokenizer | None = None) -> tuple[str, float]:
        """(class name, probability) of ``text``, encoded by ``tokenizer``, else by the
        classifier's own, else by GPT-2's."""
        return classify(
            self.model,
            tokenizer or self.tokenizer or gpt2_tokenizer(),
            text,
            self.max_length,
            read_position=self.read_position,
            pad_id=self.pad_id,
            class_names=self.class_names,
        )


def save_classifier(directory: str | Path, classifier: Classifier) -> Path:
    """Write a classifier to ``directory``: ``config.json`` (the base GPT's ``GPTConfig``),
    ``model.safetensors`` (all weights, LoRA adapters merged in) and ``classifier.json`` (number
    of classes, their names, ``max_length``, ``read_position``, ``pad_id``), plus the
    classifier's tokenizer (``tokenizer.bpe.json``) when it has one. An earlier classifier in
    ``directory`` is replaced by a staged swap (``llmcourse.saving``), so a crash leaves the
    old classifier or the new one. Returns the path."""
    directory = Path(directory)
    check_save_destination(directory)
    model = classifier.model
    if len(classifier.class_names) != model.lm_head.out_features:
        raise InputError(
            f"{len(classifier.class_names)} class names for a head with "
            f"{model.lm_head.out_features} outputs"
        )
    settings = {
        "format": CLASSIFIER_FORMAT,
        "num_classes": model.lm_head.out_features,
        "class_names": list(classifier.class_names),
        "max_length": classifier.max_length,
        "read_position": classifier.read_position,
        "pad_id": classifier.pad_id,
    }
    with staged_directory(directory) as staging:
        if classifier.tokenizer is not None:
            save_tokenizer(classifier.tokenizer, staging)
        write_config(staging / CONFIG_FILE, model.config)
        save_file(unique_tensors(merged_state_dict(model)), str(staging / WEIGHTS_FILE),
                  metadata=weights_metadata(model))
        (staging / CLASSIFIER_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return directory


def check_save_destination(directory: str | Path, *, overwrite: bool = True) -> None:
    """Raise ``CheckpointError`` if ``save_classifier`` would refuse ``directory``.

    It accepts a new or empty directory, or an earlier classifier (which it replaces, unless
    ``overwrite`` is False). Anything else is refused: a base model's checkpoint has files of
    the same names, but no ``classifier.json``."""
    check_destination(
        directory, what="a classifier", own_names=CLASSIFIER_FILES, marker=CLASSIFIER_FILE,
        replace=overwrite, error=CheckpointError,
    )


def load_classifier(directory: str | Path, *, device: str | torch.device = "cpu") -> Classifier:
    """A classifier saved by ``save_classifier``, in evaluation mode on ``device``."""
    directory = Path(directory)
    recover(directory)
    settings_path = directory / CLASSIFIER_FILE
    if not settings_path.is_file():
        raise CheckpointError(
            f"{directory} is not a classifier checkpoint (it has no {CLASSIFIER_FILE}); a base "
            "model becomes one with `llmcourse finetune classify --base MODEL --out DIR`"
        )
    settings = _read_settings(settings_path)
    config = read_config(directory)
    if settings["pad_id"] is not None and settings["pad_id"] >= config.vocab_size:
        raise CheckpointError(
            f"{settings_path}: field 'pad_id' is {settings['pad_id']}, not a token id of the "
            f"model's vocabulary of {config.vocab_size} (in {CONFIG_FILE}); save the "
            "classifier again"
        )
    with torch.device("meta"):
        model = GPT(config)
        replace_head(model, settings["num_classes"])
    try:
        state = load_file(directory / WEIGHTS_FILE)
        model.load_state_dict(state, strict=True, assign=True)
    except (FileNotFoundError, SafetensorError, RuntimeError) as error:
        raise CheckpointError(
            f"the weights in {directory} do not fit its {CONFIG_FILE} and {CLASSIFIER_FILE} "
            f"({error}); save the classifier again"
        ) from None
    check_config_unchanged(directory, config, error=CheckpointError)
    return Classifier(
        model=model.to(device).eval(),
        max_length=settings["max_length"],
        read_position=settings["read_position"],
        class_names=tuple(settings["class_names"]),
        pad_id=settings["pad_id"],
        tokenizer=(
            load_tokenizer(directory, vocab_size=config.vocab_size)
            if (directory / TOKENIZER_FILE).is_file()
            else None  # saved without one: classify() then needs the tokenizer passed in
        ),
    )


def _read_settings(path: Path) -> dict:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    keys = ("num_classes", "class_names", "max_length", "read_position", "pad_id")
    missing = [key for key in keys if key not in settings]
    if settings.get("format") != CLASSIFIER_FORMAT or missing:
        raise CheckpointError(
            f"{path} is not a classifier description written by save_classifier "
            f"(format {settings.get('format')!r}, missing {missing})"
        )
    _check_setting(path, settings, "num_classes", _is_whole(settings["num_classes"])
                   and settings["num_classes"] >= 2, "a whole number, at least 2")
    names = settings["class_names"]
    _check_setting(path, settings, "class_names", isinstance(names, list) and all(
        isinstance(name, str) and name for name in names), "a list of non-empty strings")
    if len(names) != settings["num_classes"]:
        raise CheckpointError(
            f"{path} names {len(names)} classes but says num_classes is "
            f"{settings['num_classes']}; save the classifier again"
        )
    max_length = settings["max_length"]
    _check_setting(path, settings, "max_length", max_length is None or (
        _is_whole(max_length) and max_length >= 1), "null or a whole number, at least 1")
    _check_setting(path, settings, "read_position", isinstance(
        settings["read_position"], str) and settings["read_position"] in READ_POSITIONS,
        f"one of {', '.join(map(repr, READ_POSITIONS))}")
    pad_id = settings["pad_id"]
    _check_setting(path, settings, "pad_id", pad_id is None or (_is_whole(pad_id) and pad_id >= 0),
                   "null or a token id (a whole number, 0 or more)")
    return settings


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_setting(path: Path, settings: dict, name: str, valid: bool, expected: str) -> None:
    """Raise ``CheckpointError`` naming the field and the file unless ``valid``."""
    if not valid:
        value = settings[name]
        raise CheckpointError(
            f"{path}: field {name!r} must be {expected}, got {json.dumps(value)} (a JSON "
            f"{_json_type(value)}); the file was changed or damaged: save the classifier again"
        )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)
