from __future__ import annotations

import pytest
import torch

from llmcourse.errors import CourseError, DataError
from llmcourse.sliding_window import SlidingWindowDataset, create_dataloader, split_text


def test_targets_are_inputs_shifted_by_one():
    ids = list(range(100, 120))
    dataset = SlidingWindowDataset(ids, max_length=4, stride=3)
    for index in range(len(dataset)):
        inputs, targets = dataset[index]
        start = 3 * index
        assert inputs.tolist() == ids[start : start + 4]
        assert targets.tolist() == ids[start + 1 : start + 5]
        assert inputs.dtype == targets.dtype == torch.long


def test_stride_one_gives_every_window():
    dataset = SlidingWindowDataset(list(range(10)), max_length=4, stride=1)
    assert len(dataset) == 6  # starts 0..5: the last target ends at id 9
    assert [dataset[i][0][0].item() for i in range(len(dataset))] == [0, 1, 2, 3, 4, 5]
    assert dataset[5][1].tolist() == [6, 7, 8, 9]


def test_stride_equal_to_max_length_gives_disjoint_inputs():
    dataset = SlidingWindowDataset(list(range(13)), max_length=4, stride=4)
    inputs = [dataset[i][0].tolist() for i in range(len(dataset))]
    assert inputs == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert dataset[2][1].tolist() == [9, 10, 11, 12]


def test_exactly_one_window_fits():
    dataset = SlidingWindowDataset([5, 6, 7], max_length=2, stride=1)
    assert len(dataset) == 1


def test_too_short_for_one_window_is_a_clear_error():
    with pytest.raises(DataError, match="at least 5") as error:
        SlidingWindowDataset([1, 2, 3, 4], max_length=4, stride=1)
    assert isinstance(error.value, CourseError)


@pytest.mark.parametrize("max_length, stride", [(0, 1), (4, 0), (-1, 2)])
def test_non_positive_sizes_are_rejected(max_length, stride):
    with pytest.raises(ValueError, match="must be >= 1"):
        SlidingWindowDataset(list(range(20)), max_length=max_length, stride=stride)


def test_nested_ids_are_rejected():
    with pytest.raises(ValueError, match="one flat sequence"):
        SlidingWindowDataset([[1, 2, 3], [4, 5, 6]], max_length=2, stride=1)


class CharTokenizer:
    """Each character is its own token id (its code point)."""

    def encode(self, text, *, allowed_special=frozenset()):
        return [ord(c) for c in text]


def test_from_text_uses_the_tokenizer():
    dataset = SlidingWindowDataset.from_text("abcdef", CharTokenizer(), max_length=3, stride=2)
    assert dataset[0][0].tolist() == [97, 98, 99]
    assert dataset[1][1].tolist() == [100, 101, 102]


def test_same_seed_same_batches_and_other_seed_other_order():
    dataset = SlidingWindowDataset(list(range(200)), max_length=4, stride=4)

    def first_epoch(seed):
        loader = create_dataloader(dataset, batch_size=5, shuffle=True, seed=seed)
        return [inputs for inputs, _ in loader]

    first, again, other = first_epoch(7), first_epoch(7), first_epoch(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_batches_have_the_right_shape_and_drop_last():
    dataset = SlidingWindowDataset(list(range(50)), max_length=4, stride=4)  # 12 windows
    loader = create_dataloader(dataset, batch_size=5, shuffle=False, drop_last=True)
    batches = list(loader)
    assert len(batches) == 2
    inputs, targets = batches[0]
    assert inputs.shape == targets.shape == (5, 4)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    kept = create_dataloader(dataset, batch_size=5, shuffle=False, drop_last=False)
    assert [len(x) for x, _ in kept] == [5, 5, 2]


def test_fewer_examples_than_a_batch_with_drop_last_is_an_error():
    dataset = SlidingWindowDataset(list(range(9)), max_length=4, stride=4)
    with pytest.raises(DataError, match="fewer than one batch"):
        create_dataloader(dataset, batch_size=8)


def test_split_text_by_characters():
    train, val = split_text("abcdefghij", 0.9)
    assert (train, val) == ("abcdefghi", "j")
    with pytest.raises(ValueError):
        split_text("abc", 1.0)
