"""frugalnn.utils.batch: the inputs of a batch or of a dataset's first examples, with the
labels dropped, for every shape a data loader yields."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from frugalnn.errors import UserError
from frugalnn.utils.batch import example_inputs, inputs_of


def test_inputs_of_every_batch_shape() -> None:
    x, y = torch.randn(4, 3), torch.arange(4)
    assert inputs_of((x, y)) is x
    assert inputs_of([x]) is x  # a TensorDataset of inputs alone
    assert inputs_of(x) is x
    d = inputs_of({"input_ids": x, "attention_mask": x, "labels": y})
    assert set(d) == {"input_ids", "attention_mask"}
    with pytest.raises(UserError, match="tuple of 3"):
        inputs_of((x, y, y))


def test_example_inputs_of_pairs_inputs_alone_and_dicts() -> None:
    x, y = torch.randn(5, 3), torch.arange(5)
    torch.testing.assert_close(example_inputs(TensorDataset(x, y), 2), x[:2])
    torch.testing.assert_close(example_inputs(TensorDataset(x), 3), x[:3])  # not a 1-list
    rows = [{"input_ids": x[i], "labels": y[i]} for i in range(5)]
    got = example_inputs(rows, 2)
    assert set(got) == {"input_ids"}
    torch.testing.assert_close(got["input_ids"], x[:2])
    torch.testing.assert_close(example_inputs(TensorDataset(x), 99), x)  # at most len
