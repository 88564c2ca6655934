"""Pretrained ResNet-CIFAR checkpoints reproduce their accuracy (real data)."""

from __future__ import annotations

import pytest
import torch

from frugalnn.data import get_dataset
from frugalnn.errors import UserError
from frugalnn.models import create_model
from frugalnn.models.resnet import load_resnet_cifar_checkpoint

pytestmark = pytest.mark.data

FILES = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}


def _ckpt(data_dir, name):
    return data_dir / "pretrained" / "resnet-cifar10" / FILES[name]


@pytest.mark.parametrize("name,expected", [("resnet20", 0.916), ("resnet56", 0.926)])
def test_accuracy_on_exact_subset(data_dir, name, expected):
    model = create_model(name, checkpoint=_ckpt(data_dir, name)).eval()
    x, y = get_dataset("cifar10-exact", "test", data_dir).tensors()
    with torch.inference_mode():
        pred = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    acc = (pred == y).float().mean().item()
    assert abs(acc - expected) < 0.003, acc


def test_checkpoint_errors(data_dir, tmp_path):
    found = create_model("resnet20", pretrained=True, data_dir=data_dir)
    assert found.frugalnn_spec == {"name": "resnet20", "kwargs": {}}
    ref = create_model("resnet20", checkpoint=_ckpt(data_dir, "resnet20"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(found.eval()(x), ref.eval()(x), rtol=0, atol=0)
    with pytest.raises(UserError, match="no pretrained resnet110"):
        create_model("resnet110", pretrained=True, data_dir=data_dir)
    with pytest.raises(UserError, match="not found"):
        create_model("resnet20", checkpoint=tmp_path / "missing.th")
    with pytest.raises(UserError, match="does not fit resnet32"):
        create_model("resnet32", checkpoint=_ckpt(data_dir, "resnet20"))
    with pytest.raises(UserError, match="shape mismatch"):
        create_model("resnet20", num_classes=100, checkpoint=_ckpt(data_dir, "resnet20"))
    bad = tmp_path / "bad.th"
    bad.write_bytes(_ckpt(data_dir, "resnet20").read_bytes()[:5000])
    with pytest.raises(UserError, match="cannot read"):
        load_resnet_cifar_checkpoint(create_model("resnet20"), bad)
