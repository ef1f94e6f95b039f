"""Spam classification: parsing the SMS data as the book does, the balanced split, padding,
the read position, the head and freezing strategies, training, metrics and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from llmcourse.classification import (
    CLASS_NAMES,
    ClassificationModel,
    Classifier,
    EpochAccuracy,
    SpamDataset,
    balanced_split,
    classification_logits,
    classify,
    evaluate,
    freeze_for,
    load_classifier,
    load_sms_spam,
    make_loaders,
    metrics_from_predictions,
    parse_sms_spam,
    read_positions,
    replace_head,
    save_classifier,
    train_classifier,
)
from llmcourse.errors import CheckpointError, ConfigError, CourseError, DataError, InputError
from llmcourse.lora_models import lora_layers
from llmcourse.model import GPT, GPTConfig
from llmcourse.splits import Split
from llmcourse.tokenizers import GPT2_EOT_ID, gpt2_tokenizer

TINY = GPTConfig(vocab_size=50257, context_length=64, n_layer=1, n_head=2, n_embd=16)
P = GPT2_EOT_ID
# GPT-2 ids of "Hello, do you like tea?" (tiktoken's reference encoding)
TEA_IDS = [15496, 11, 466, 345, 588, 8887, 30]


def tiny_classifier(seed: int = 0, config: GPTConfig = TINY) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config)
    replace_head(model, num_classes=2)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Data


def test_parsing_the_mirror_file_gives_the_books_counts(data_mirror: Path):
    """5,574 lines; the default csv quoting of the book's pandas call joins lines 5082-5084 into
    one message, so there are 5,572 messages: 4,825 ham and 747 spam."""
    rows = load_sms_spam(data_mirror / "SMSSpamCollection.tsv")
    assert len(rows) == 5572
    assert sum(label == 1 for _, label in rows) == 747
    assert sum(label == 0 for _, label in rows) == 4825
    joined = [text for text, _ in rows if "\nham\t" in text]
    assert len(joined) == 1 and joined[0].count("\n") == 2
    assert rows[0] == ("Go until jurong point, crazy.. Available only in bugis n great world la e "
                       "buffet... Cine there got amore wat...", 0)
    assert load_sms_spam() == rows  # the registry's copy is the same file


def test_parsing_quoted_fields_like_pandas():
    text = 'ham\tplain "quote" inside\nspam\t"quoted"\nham\t"open\nspam\tstill open"\n'
    assert parse_sms_spam(text) == [
        ('plain "quote" inside', 0),
        ("quoted", 1),
        ("open\nspam\tstill open", 0),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ham\tok\nspam no tab here\n", "line 2: expected 'label<TAB>message', found no tab in"),
        ("ham\tok\nham\tok\nSPAM\tWIN\n", "line 3: unknown label 'SPAM'"),
        ("ham\tok\n\nham\tok\n", "line 2: .*found an empty line"),
        ('ham\t"two\nlines"\nham\ta\tb\n', "line 3: .*found 3 fields in 'ham"),
        ('ham\tok\nham\t"never closed\nspam\tx\n', "line 2: the quote .* is never closed"),
    ],
)
def test_malformed_rows_name_their_line(text: str, message: str):
    with pytest.raises(DataError, match=message) as caught:
        parse_sms_spam(text, source="sms.tsv")
    assert str(caught.value).startswith("sms.tsv, line")
    assert isinstance(caught.value, CourseError)


def test_balanced_split_has_the_books_sizes_and_is_deterministic(data_mirror: Path):
    rows = load_sms_spam()
    split = balanced_split(rows, seed=123)
    assert (len(split.train), len(split.validation), len(split.test)) == (1045, 149, 300)
    everything = split.train + split.validation + split.test
    assert sum(label for _, label in everything) == 747
    assert sorted(t for t, label in everything if label) == sorted(t for t, lb in rows if lb)
    ham = [t for t, label in everything if label == 0]
    assert len(ham) == 747 and len(set(ham)) == len({t for t, lb in rows if lb == 0} & set(ham))
    assert balanced_split(rows, seed=123) == split
    assert balanced_split(rows, seed=124).train != split.train
    assert 0.4 < sum(label for _, label in split.train) / 1045 < 0.6  # both classes shuffled in


def test_balanced_split_on_a_small_example():
    rows = [(f"ham {i}", 0) for i in range(10)] + [(f"spam {i}", 1) for i in range(4)]
    split = balanced_split(rows, seed=0, fractions=(0.5, 0.25, 0.25))
    assert (len(split.train), len(split.validation), len(split.test)) == (4, 2, 2)
    everything = split.train + split.validation + split.test
    assert sorted(t for t, label in everything if label) == [f"spam {i}" for i in range(4)]
    assert sum(1 for _, label in everything if label == 0) == 4
    assert split.truncated(1) == Split(split.train[:1], split.validation[:1], split.test[:1])
    with pytest.raises(ConfigError, match="sum to 1"):
        balanced_split(rows, fractions=(0.5, 0.5, 0.5))


def test_dataset_pads_with_the_end_token_and_truncates():
    tokenizer = gpt2_tokenizer()
    rows = [("Hello, do you like tea?", 1), ("Hello,", 0)]
    longest = SpamDataset(rows, tokenizer)
    assert longest.max_length == 7
    assert longest.inputs.tolist() == [TEA_IDS, [15496, 11, P, P, P, P, P]]
    assert longest.labels.tolist() == [1, 0]
    ids, label = longest[1]
    assert ids.dtype == torch.long and label.item() == 0
    short = SpamDataset(rows, tokenizer, max_length=3)
    assert short.inputs.tolist() == [TEA_IDS[:3], [15496, 11, P]]
    capped = SpamDataset(rows, tokenizer, context_length=4, pad_id=0)
    assert capped.inputs.tolist() == [TEA_IDS[:4], [15496, 11, 0, 0]]
    special = SpamDataset([("<|endoftext|>", 0)], tokenizer)  # ordinary text, not the end token
    assert P not in special.inputs.tolist()[0]
    with pytest.raises(ConfigError, match="longer than the model's context of 4"):
        SpamDataset(rows, tokenizer, max_length=5, context_length=4)


def test_loaders_share_the_training_length_and_drop_the_last_partial_batch():
    split = Split([(f"message number {i}", i % 2) for i in range(5)],
                  [("a much longer validation message than any of the others", 0)],
                  [("hi", 1)])
    train, validation, test = make_loaders(split, gpt2_tokenizer(), batch_size=2)
    assert len(train) == 2  # 5 examples, batches of 2, the last one dropped
    assert validation.dataset.max_length == test.dataset.max_length == train.dataset.max_length
    with pytest.raises(ConfigError, match="no full batch of 8"):
        make_loaders(split, gpt2_tokenizer(), batch_size=8)


# ---------------------------------------------------------------------------------------------
# The model


def test_last_and_last_real_positions_on_a_padded_batch():
    ids = torch.tensor([[5, 6, 7, P, P], [1, 2, 3, 4, 5], [P, P, P, P, P]])
    assert read_positions(ids, "last", P).tolist() == [4, 4, 4]
    assert read_positions(ids, "last_real", P).tolist() == [2, 4, 0]
    model = tiny_classifier()
    logits = model(ids)  # (3, 5, 2)
    assert torch.equal(classification_logits(model, ids, "last"), logits[:, -1])
    expected = torch.stack([logits[0, 2], logits[1, 4], logits[2, 0]])
    assert torch.equal(classification_logits(model, ids, "last_real"), expected)
    with pytest.raises(ConfigError, match="read_position must be one of"):
        classification_logits(model, ids, "first")


def test_replace_head_unties_the_head_and_leaves_the_embedding_intact():
    torch.manual_seed(0)
    model = GPT(TINY)
    embedding = model.transformer.wte.weight
    saved = embedding.detach().clone()
    head = replace_head(model, num_classes=3)
    assert model.lm_head is head and (head.in_features, head.out_features) == (16, 3)
    assert head.bias is not None and head.weight is not embedding
    freeze_for(model, "head")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    logits = classification_logits(model, torch.tensor([[1, 2, 3]]))
    F.cross_entropy(logits, torch.tensor([2])).backward()
    optimizer.step()
    assert model.transformer.wte.weight is embedding and torch.equal(embedding, saved)
    assert model(torch.tensor([[1, 2]])).shape == (1, 2, 3)


def trainable_names(model: GPT) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_freezing_strategies_train_exactly_the_chosen_parameters():
    config = GPTConfig(vocab_size=50257, context_length=8, n_layer=2, n_head=2, n_embd=8)
    all_names = set(dict(tiny_classifier(config=config).named_parameters()))
    head = {"lm_head.weight", "lm_head.bias"}
    last_block = {n for n in all_names if n.startswith("transformer.h.1.")}
    final_norm = {"transformer.ln_f.weight", "transformer.ln_f.bias"}
    assert len(last_block) == 12

    model = tiny_classifier(config=config)
    report = freeze_for(model, "head")
    assert trainable_names(model) == head and report.trainable == 8 * 2 + 2
    model = tiny_classifier(config=config)
    freeze_for(model, "last_block")
    assert trainable_names(model) == head | last_block | final_norm
    model = tiny_classifier(config=config)
    report = freeze_for(model, "full")
    assert trainable_names(model) == all_names and report.trainable == report.total
    model = tiny_classifier(config=config)
    report = freeze_for(model, "lora", rank=2, alpha=4)
    adapters = {n for n in model.state_dict() if ".lora_" in n}
    assert len(adapters) == 2 * 4 * 2  # 2 blocks x 4 linear layers x (A, B)
    assert trainable_names(model) == head | adapters
    per_block = 2 * (8 + 24) + 2 * (8 + 8) + 2 * (8 + 32) + 2 * (32 + 8)
    assert report.trainable == 2 * per_block + 8 * 2 + 2
    with pytest.raises(ConfigError, match="call replace_head"):
        freeze_for(GPT(config), "head")
    with pytest.raises(ConfigError, match="unknown strategy"):
        freeze_for(tiny_classifier(config=config), "everything")


def test_a_few_steps_of_fine_tuning_learn_the_training_set(data_mirror: Path):
    split = balanced_split(load_sms_spam(), seed=123).truncated(32)
    train, validation, _ = make_loaders(split, gpt2_tokenizer(), batch_size=8,
                                        context_length=TINY.context_length, seed=0)
    model = tiny_classifier(seed=0)
    freeze_for(model, "full")
    before = evaluate(model, train, read_position="last_real")
    accuracy = EpochAccuracy(model, train, validation, eval_batches=2,
                             read_position="last_real")
    history = train_classifier(model, train, validation, epochs=2, learning_rate=3e-3,
                               eval_every=4, eval_batches=2, read_position="last_real",
                               progress=False, callbacks=[accuracy])
    after = evaluate(model, train, read_position="last_real")
    assert history.steps == list(range(1, 9)) and len(history.train_losses) == 8
    assert [record.step for record in history.evals] == [4, 8]
    assert [(record.epoch, record.step) for record in accuracy.records] == [(1, 4), (2, 8)]
    assert accuracy.records[-1].train_accuracy == evaluate(
        model, train, read_position="last_real", max_batches=2).accuracy
    assert after.loss < before.loss - 0.1
    assert after.accuracy >= 0.75  # chance is 0.5: 15 of the 32 messages are spam


def test_measuring_accuracy_each_epoch_does_not_change_the_run(data_mirror: Path):
    split = balanced_split(load_sms_spam(), seed=123).truncated(24)

    def run(callbacks_for) -> list[float]:
        train, validation, _ = make_loaders(split, gpt2_tokenizer(), batch_size=8,
                                            context_length=TINY.context_length, seed=0)
        model = tiny_classifier(seed=0)
        freeze_for(model, "head")
        history = train_classifier(model, train, validation, epochs=3, learning_rate=1e-2,
                                   progress=False, callbacks=callbacks_for(model, train,
                                                                           validation))
        return history.train_losses

    plain = run(lambda *_: [])
    measured = run(lambda model, train, validation: [
        EpochAccuracy(model, train, validation, eval_batches=1, verbose=False)])
    assert measured == plain and len(plain) == 9


def test_classification_model_gives_the_logits_and_loss_the_training_loop_needs():
    torch.manual_seed(0)
    model = tiny_classifier(seed=0)
    ids = torch.tensor([TEA_IDS + [P, P], TEA_IDS[:4] + [P] * 5])
    labels = torch.tensor([1, 0])
    wrapper = ClassificationModel(model, "last_real", pad_id=P)
    expected = classification_logits(model, ids, "last_real", pad_id=P)
    torch.testing.assert_close(wrapper(ids), expected, rtol=0, atol=0)
    logits, loss = wrapper(ids, labels)
    torch.testing.assert_close(loss, F.cross_entropy(expected, labels), rtol=0, atol=0)
    assert sum(p.numel() for p in wrapper.parameters()) == model.num_parameters()
    with pytest.raises(ConfigError, match="read_position"):
        ClassificationModel(model, "first")


# ---------------------------------------------------------------------------------------------
# Metrics


def test_metrics_on_hand_made_predictions():
    labels = [0, 0, 0, 0, 1, 1]
    predictions = [0, 0, 0, 1, 0, 1]
    metrics = metrics_from_predictions(labels, predictions, loss=0.25)
    assert metrics.confusion == [[3, 1], [1, 1]]
    assert metrics.accuracy == pytest.approx(4 / 6)
    assert metrics.balanced_accuracy == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert (metrics.precision, metrics.recall, metrics.f1) == (0.5, 0.5, 0.5)
    assert metrics.examples == 6 and metrics.loss == 0.25
    skewed = metrics_from_predictions([1, 1, 1, 0], [1, 0, 0, 1])
    assert skewed.precision == pytest.approx(1 / 2) and skewed.recall == pytest.approx(1 / 3)
    assert skewed.f1 == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    never_spam = metrics_from_predictions([0, 1, 1], [0, 0, 0])
    assert (never_spam.precision, never_spam.recall, never_spam.f1) == (0.0, 0.0, 0.0)
    assert never_spam.balanced_accuracy == pytest.approx(0.5)
    three = metrics_from_predictions([0, 1, 2, 2], [0, 2, 2, 1], num_classes=3, positive_class=2)
    assert three.confusion == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    assert (three.precision, three.recall) == (0.5, 0.5)


def test_evaluate_matches_a_direct_computation():
    model = tiny_classifier(seed=1)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 3.0)  # decisive, varied predictions
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 50257, (10, 6), generator=generator)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 1, 1])
    loader = DataLoader(list(zip(inputs, labels, strict=True)), batch_size=4)
    metrics = evaluate(model, loader)
    with torch.no_grad():
        logits = model(inputs)[:, -1]
    expected = metrics_from_predictions(labels.tolist(), logits.argmax(-1).tolist())
    assert metrics.confusion == expected.confusion
    assert metrics.loss == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-6)
    first_batch = evaluate(model, loader, max_batches=1)
    assert first_batch.examples == 4


# ---------------------------------------------------------------------------------------------
# Using and keeping a classifier


def test_classify_pads_to_max_length_and_returns_the_probability():
    model = tiny_classifier(seed=2)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 3.0)
        logits = model(torch.tensor([TEA_IDS + [P, P, P]]))[0, -1]
    probabilities = torch.softmax(logits, -1)
    label, probability = classify(model, gpt2_tokenizer(), "Hello, do you like tea?", 10)
    assert label == CLASS_NAMES[int(probabilities.argmax())]
    assert probability == pytest.approx(probabilities.max().item(), abs=1e-6)
    label, probability = classify(model, gpt2_tokenizer(), "Hello, do you like tea?", 3)
    with torch.no_grad():
        cut = torch.softmax(model(torch.tensor([TEA_IDS[:3]]))[0, -1], -1)
    assert probability == pytest.approx(cut.max().item(), abs=1e-6)
    with pytest.raises(InputError, match="empty text"):
        classify(model, gpt2_tokenizer(), "")


def test_classifier_checkpoint_round_trip(tmp_path: Path):
    model = tiny_classifier(seed=3)
    freeze_for(model, "lora", rank=2, alpha=4)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_b.normal_(0, 0.5)
    saved = Classifier(model, max_length=12, read_position="last_real",
                       class_names=("ham", "spam"))
    save_classifier(tmp_path / "clf", saved)
    settings = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert settings["num_classes"] == 2 and settings["max_length"] == 12
    loaded = load_classifier(tmp_path / "clf")
    assert not lora_layers(loaded.model)  # adapters are merged into the saved weights
    assert (loaded.max_length, loaded.read_position, loaded.class_names) == (
        12, "last_real", ("ham", "spam"))
    ids = torch.tensor([[1, 2, 3, P], [4, 5, 6, 7]])
    with torch.no_grad():
        expected = classification_logits(model.eval(), ids, "last_real")
        actual = classification_logits(loaded.model, ids, "last_real")
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    text = "Free entry to win"
    label, probability = loaded.classify(text)
    assert (label, probability) == pytest.approx(saved.classify(text), abs=1e-5)
    save_classifier(tmp_path / "clf", saved)  # replacing a classifier's own files is fine


def test_classifier_checkpoint_errors(tmp_path: Path):
    model = tiny_classifier()
    with pytest.raises(CheckpointError, match="not a classifier checkpoint"):
        load_classifier(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not part of a classifier \\(notes.txt\\)"):
        save_classifier(tmp_path, Classifier(model, max_length=8))
    directory = save_classifier(tmp_path / "clf", Classifier(model, max_length=8))
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "n_embd": 32}))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_classifier(directory)
    (directory / "classifier.json").write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="not a classifier description"):
        load_classifier(directory)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_length", "12", "null or a whole number, at least 1, got \"12\" (a JSON string)"),
        ("max_length", 0, "null or a whole number, at least 1, got 0 (a JSON number)"),
        ("read_position", ["last"], "one of 'last', 'last_real', got [\"last\"] (a JSON array)"),
        ("read_position", "first", "one of 'last', 'last_real', got \"first\""),
        ("num_classes", "2", "a whole number, at least 2, got \"2\" (a JSON string)"),
        ("num_classes", True, "a whole number, at least 2, got true (a JSON boolean)"),
        ("class_names", "ab", "a list of non-empty strings, got \"ab\" (a JSON string)"),
        ("class_names", [1, 2], "a list of non-empty strings, got [1, 2] (a JSON array)"),
        ("pad_id", -5, "null or a token id (a whole number, 0 or more), got -5"),
        ("pad_id", 1.5, "null or a token id (a whole number, 0 or more), got 1.5"),
    ],
)
def test_tampered_classifier_fields_name_the_field_and_the_file(tmp_path, field, value, expected):
    directory = save_classifier(tmp_path / "clf", Classifier(tiny_classifier(), max_length=8))
    path = directory / "classifier.json"
    settings = json.loads(path.read_text())
    path.write_text(json.dumps({**settings, field: value}))
    with pytest.raises(CheckpointError) as raised:
        load_classifier(directory)
    assert str(raised.value).startswith(f"{path}: field {field!r} must be {expected}")
    assert str(raised.value).endswith("save the classifier again")


def test_a_padding_id_outside_the_vocabulary_is_refused(tmp_path):
    directory = save_classifier(tmp_path / "clf", Classifier(tiny_classifier(), max_length=8))
    path = directory / "classifier.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "pad_id": 50257}))
    with pytest.raises(CheckpointError, match="'pad_id' is 50257, not a token id of the "
                       "model's vocabulary of 50257"):
        load_classifier(directory)


def test_data_of_one_class_is_refused_with_the_counts():
    only_ham = [(f"ham {i}", 0) for i in range(40)]
    with pytest.raises(DataError, match=r"the data holds one class only \(40 ham, 0 spam\)"):
        balanced_split(only_ham)
    one_class_training = Split(train=[("win", 1), ("prize", 1)], validation=[("hi", 0)],
                               test=[("hi", 0)])
    with pytest.raises(DataError, match=r"the training part holds one class only "
                       r"\(0 ham, 2 spam\)"):
        make_loaders(one_class_training, gpt2_tokenizer(), batch_size=1)


def test_an_edited_head_count_is_found_in_a_classifier(tmp_path: Path):
    directory = save_classifier(tmp_path / "clf", Classifier(tiny_classifier(), max_length=8))
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "n_head": 1}))  # every shape stays the same
    with pytest.raises(CheckpointError, match="config.json was edited after saving: "
                       f"n_head: saved {config['n_head']}, now 1"):
        load_classifier(directory)
