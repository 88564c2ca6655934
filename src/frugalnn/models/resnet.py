"""ResNet for CIFAR (He et al. 2016, section 4.2), matching the public checkpoints.

The checkpoints in ``pretrained/resnet-cifar10`` (akamaster/pytorch_resnet_cifar10)
use a 16-channel stem, three stages of BasicBlocks (16/32/64 channels, strides
1/2/2), bias-free convolutions, and the parameter-free "option A" shortcut on
downsampling blocks. The model keeps one flat ``blocks`` list (the uniform
staged interface) and the loader maps the file's ``layer{s}.{i}`` names onto it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from frugalnn.errors import UserError
from frugalnn.models.base import StagedModel
from frugalnn.models.registry import register_model

#: Input normalisation the pretrained checkpoints were trained with (on [0, 1] pixels).
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = ShortcutA(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(StagedModel):
    """ResNet-(6n+2) for 32x32 images: stem, 3n BasicBlocks, pool + linear."""

    feature_kind = "image"

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise UserError(f"ResNet-CIFAR depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.blocks_per_stage = n
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.blocks = nn.ModuleList(blocks)
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Kaiming-normal convolutions and linear layer, as the reference training used.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def classify(self, state: torch.Tensor) -> torch.Tensor:
        return self.linear(state.mean(dim=(2, 3)))


_LAYER_KEY = re.compile(r"^layer([123])\.(\d+)\.(.*)$")


def _checkpoint_to_model_keys(state: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Strip ``module.`` and map ``layer{s}.{i}.*`` to ``blocks.{(s-1)*n+i}.*``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        m = _LAYER_KEY.match(key)
        if m:
            stage, idx, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            key = f"blocks.{(stage - 1) * n + idx}.{rest}"
        out[key] = value
    return out


def load_resnet_cifar_checkpoint(model: ResNetCifar, path: str | Path) -> ResNetCifar:
    """Load a ``resnet*.th`` file (``{'state_dict': ...}``, ``module.`` keys) into ``model``.

    Uses ``torch.load(weights_only=True)``: no code in the file is executed. Every
    weight must match by name and shape (BatchNorm's ``num_batches_tracked``, absent
    from these files, is the only tolerated gap).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass the path of a resnet*-*.th file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or not a torch file
        raise UserError(
            f"cannot read checkpoint {path} ({type(exc).__name__}); "
            "expected a torch file holding {'state_dict': ...}"
        ) from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} holds no state_dict of tensors")
    state = _checkpoint_to_model_keys(state, model.blocks_per_stage)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not fit resnet{model.depth}: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
            "pick the model of the same depth"
        )
    bad = [k for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        raise UserError(
            f"checkpoint {path} does not fit resnet{model.depth}: shape mismatch at {bad[:2]}; "
            "check depth and num_classes"
        )
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k]
    model.load_state_dict(state, strict=True)
    return model


def find_pretrained_resnet(depth: int, data_dir: str | Path | None = None) -> Path:
    """The ``resnet{depth}-*.th`` file under ``<data-dir>/pretrained/resnet-cifar10/``.

    ``data_dir`` defaults to ``$FRUGALNN_DATA`` (see :func:`frugalnn.data.resolve_data_dir`).
    """
    from frugalnn.data.base import resolve_data_dir

    root = resolve_data_dir(data_dir)
    for folder in (root / "pretrained" / "resnet-cifar10", root):
        found = sorted(folder.glob(f"resnet{depth}-*.th"))
        if found:
            return found[0]
    raise UserError(
        f"no pretrained resnet{depth}-*.th under {root}/pretrained/resnet-cifar10; "
        "pass checkpoint=PATH or point FRUGALNN_DATA at the data directory"
    )


def _builder(depth: int):
    def build(
        num_classes: int = 10,
        in_channels: int = 3,
        checkpoint: str | Path | None = None,
        pretrained: bool = False,
        data_dir: str | Path | None = None,
    ) -> ResNetCifar:
        model = ResNetCifar(depth, num_classes=num_classes, in_channels=in_channels)
        if pretrained and checkpoint is None:
            checkpoint = find_pretrained_resnet(depth, data_dir)
        if checkpoint is not None:
            load_resnet_cifar_checkpoint(model, checkpoint)
        return model

    build.__name__ = f"resnet{depth}"
    build.__doc__ = (
        f"ResNet-{depth} for CIFAR (32x32 RGB); ``checkpoint`` loads a resnet*.th file, "
        "``pretrained=True`` finds it under the data directory."
    )
    return build


for _depth in (20, 32, 44, 56, 110):
    register_model(
        f"resnet{_depth}",
        input_shape=(3, 32, 32),
        description=f"ResNet-{_depth} for CIFAR-10 (He et al. 2016, option-A shortcuts)",
        weight_args=("checkpoint", "pretrained", "data_dir"),
    )(_builder(_depth))
