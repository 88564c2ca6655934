"""The search space: a fixed stem and head around a stack of choice blocks.

Layout (ProxylessNAS's, scaled for CIFAR-sized inputs): a 3x3 convolution
stem, one fixed depthwise-separable block, then stages of choice blocks
``(width, depth, stride)`` whose first block changes width/resolution, a 1x1
convolution to ``head_channels``, global average pooling and a linear
classifier. Every choice block picks one candidate op; blocks whose input
and output shapes agree also carry an identity shortcut, and only those may
choose ``zero`` (the block then becomes a skip).

An *architecture* is a space plus one op name per choice block; it is
stored as readable JSON (:func:`arch_to_dict`) that
``create_model("nas_net", arch=...)`` builds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.nas.ops import DEFAULT_CANDIDATES, build_op, parse_op

ARCH_FORMAT = "frugalnn-nas-arch/1"


@dataclass(frozen=True)
class BlockSlot:
    """One choice block position: its shapes and which candidates it allows."""

    index: int
    c_in: int
    c_out: int
    stride: int
    in_size: int  # input height (= width) in pixels
    residual: bool
    candidates: tuple[str, ...]


@dataclass
class SearchSpace:
    """Widths, depths, strides and input size of the space; CIFAR-10 defaults."""

    input_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    stem_channels: int = 16
    stem_stride: int = 1
    first_channels: int = 16
    stages: list[tuple[int, int, int]] = field(
        default_factory=lambda: [(24, 2, 1), (32, 3, 2), (64, 3, 2), (96, 2, 1)]
    )
    head_channels: int = 256
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES

    def __post_init__(self) -> None:
        self.stages = [tuple(int(v) for v in s) for s in self.stages]  # type: ignore[misc]
        self.candidates = tuple(self.candidates)
        self.validate()

    # -- checks ---------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``UserError`` for a space that cannot be built."""
        if self.input_size < 1 or self.in_channels < 1 or self.num_classes < 2:
            raise UserError(
                "search space needs input_size >= 1, in_channels >= 1 and num_classes >= 2"
            )
        if not self.stages:
            raise UserError("search space needs at least one stage (width, depth, stride)")
        for s in self.stages:
            if len(s) != 3 or s[0] < 1 or s[1] < 1 or s[2] not in (1, 2):
                raise UserError(
                    f"bad stage {s}: give (width >= 1, depth >= 1, stride 1 or 2)"
                )
        if not self.candidates:
            raise UserError("search space needs at least one candidate operation")
        for name in self.candidates:
            parse_op(name)  # raises UserError for unknown names
        if all(c == "zero" for c in self.candidates):
            raise UserError("candidates must include at least one op besides 'zero'")
        size = -(-self.input_size // self.stem_stride)
        for _, _, stride in self.stages:
            size = -(-size // stride)
        if size < 1:
            raise UserError("input_size too small for the strides of the search space")

    # -- layout -----------------------------------------------------------------
    def slots(self) -> list[BlockSlot]:
        """Every choice block with its shapes; ``zero`` only where a shortcut exists."""
        slots: list[BlockSlot] = []
        c_in = self.first_channels
        size = -(-self.input_size // self.stem_stride)
        for width, depth, stride in self.stages:
            for i in range(depth):
                s = stride if i == 0 else 1
                residual = s == 1 and c_in == width
                cands = tuple(c for c in self.candidates if residual or c != "zero")
                slots.append(BlockSlot(len(slots), c_in, width, s, size, residual, cands))
                c_in = width
                size = -(-size // s)
        return slots

    @property
    def last_channels(self) -> int:
        return self.stages[-1][0]

    @property
    def final_size(self) -> int:
        size = -(-self.input_size // self.stem_stride)
        for _, _, stride in self.stages:
            size = -(-size // stride)
        return size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = [list(s) for s in self.stages]
        d["candidates"] = list(self.candidates)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpace:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise UserError(
                f"unknown search-space field(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**d)

    @classmethod
    def for_input(cls, input_shape: tuple[int, ...], num_classes: int, **kw: Any) -> SearchSpace:
        """A space sized for ``(C, H, W)`` inputs; tiny inputs get a shallow stack."""
        c, h, _ = input_shape
        if h <= 12 and "stages" not in kw:
            kw["stages"] = [(16, 2, 1), (24, 2, 2)]
            kw.setdefault("stem_channels", 8)
            kw.setdefault("first_channels", 8)
            kw.setdefault("head_channels", 64)
        return cls(input_size=h, in_channels=c, num_classes=num_classes, **kw)


# -- fixed parts shared by the supernet and the derived network ---------------------


def build_stem(space: SearchSpace) -> nn.Sequential:
    """3x3 conv stem followed by the fixed first depthwise-separable block."""
    return nn.Sequential(
        nn.Conv2d(space.in_channels, space.stem_channels, 3, space.stem_stride, 1, bias=False),
        nn.BatchNorm2d(space.stem_channels),
        nn.ReLU6(inplace=True),
        build_op("sep3", space.stem_channels, space.first_channels, 1),
    )


def build_head(space: SearchSpace) -> nn.Sequential:
    """1x1 conv to ``head_channels``, global average pool, linear classifier."""
    return nn.Sequential(
        nn.Conv2d(space.last_channels, space.head_channels, 1, bias=False),
        nn.BatchNorm2d(space.head_channels),
        nn.ReLU6(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(space.head_channels, space.num_classes),
    )


# -- architectures ---------------------------------------------------------------------


def check_arch(space: SearchSpace, ops: list[str]) -> None:
    """``UserError`` unless ``ops`` names one allowed candidate per choice block."""
    slots = space.slots()
    if len(ops) != len(slots):
        raise UserError(
            f"architecture has {len(ops)} ops but the space has {len(slots)} choice blocks"
        )
    for slot, op in zip(slots, ops):
        parse_op(op)
        if op == "zero" and not slot.residual:
            raise UserError(
                f"block {slot.index} cannot be 'zero': its input and output shapes differ"
            )


def arch_to_dict(space: SearchSpace, ops: list[str], **extra: Any) -> dict[str, Any]:
    """Readable JSON form of an architecture (``create_model('nas_net', arch=...)``)."""
    check_arch(space, ops)
    blocks = [
        {"op": op, "in": s.c_in, "out": s.c_out, "stride": s.stride, "input_size": s.in_size}
        for s, op in zip(space.slots(), ops)
    ]
    return {"format": ARCH_FORMAT, "space": space.to_dict(), "ops": list(ops), "blocks": blocks,
            **extra}


def arch_from_dict(arch: dict[str, Any] | str | Path) -> tuple[SearchSpace, list[str]]:
    """Parse an architecture from a dict or a JSON/YAML file path."""
    if isinstance(arch, (str, Path)):
        path = Path(arch)
        if not path.is_file():
            raise UserError(f"architecture file {path} not found; pass the file `nas derive` wrote")
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                arch = yaml.safe_load(text)
            else:
                arch = json.loads(text)
        except (ValueError, ImportError) as exc:
            raise UserError(f"cannot parse architecture file {path}: {exc}") from None
    if not isinstance(arch, dict) or "space" not in arch or "ops" not in arch:
        raise UserError("architecture must be a mapping with 'space' and 'ops' entries")
    space = SearchSpace.from_dict(dict(arch["space"]))
    ops = [str(o) for o in arch["ops"]]
    check_arch(space, ops)
    return space, ops
