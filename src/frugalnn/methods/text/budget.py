"""The memory-budget knob: a budget in bytes -> bucket counts, embedding sizes, hidden width.

The rule, fixed before any measurement: the perceptron gets at most a quarter of the
budget (the widest hidden layer of :data:`HIDDEN` that fits it, at least 16); the
embedding size is 16 when the rest of the budget still gives every hashed group
:data:`WIDE_MIN_BUCKETS` buckets at that size, else 8; the hashed groups share the rest
equally. Fixed-size groups (the previous tags of the tagger) come first. Bytes are exact
(:meth:`NgramNet.nbytes`): float32 perceptron, tables in float32 (``bits=32``) or in 8 bits
with per-row float16 scale and offset (``bits=8``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from frugalnn.errors import UserError
from frugalnn.methods.text.models import mlp_params
from frugalnn.models.embedding8 import embedding_bytes

__all__ = ["HIDDEN", "MIN_BUCKETS", "Plan", "plan_budget"]

HIDDEN = (16, 32, 64, 128, 256)
MIN_BUCKETS = 16
WIDE_MIN_BUCKETS = 2048
FIXED_DIM = 8


@dataclass(frozen=True)
class Plan:
    """Sizes chosen for a budget, and the exact bytes of the model they give."""

    budget: int
    bits: int
    rows: tuple[int, ...]
    dims: tuple[int, ...]
    hidden: tuple[int, ...]
    num_classes: int
    bytes: int
    float_bytes: int
    embedding_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def _bytes(rows: Sequence[int], dims: Sequence[int], hidden: Sequence[int], classes: int,
           bits: int) -> tuple[int, int]:
    emb = sum(embedding_bytes(r, d, bits=bits) for r, d in zip(rows, dims))
    return emb + 4 * mlp_params(sum(dims), hidden, classes), emb


def plan_budget(budget: int, *, hashed_groups: int, num_classes: int, bits: int = 8,
                fixed_rows: Sequence[int] = (), hidden_layers: int = 1) -> Plan:
    """The largest model of the rule above whose exact bytes fit ``budget``."""
    if bits not in (8, 32):
        raise UserError(f"embedding bits must be 8 or 32, got {bits}")
    if hidden_layers not in (0, 1, 2):
        raise UserError(f"hidden layers must be 0, 1 or 2, got {hidden_layers}")
    fixed = list(fixed_rows)

    def build(dim: int, width: int, buckets: int) -> tuple[list[int], list[int], list[int]]:
        rows = fixed + [buckets] * hashed_groups
        dims = [FIXED_DIM] * len(fixed) + [dim] * hashed_groups
        return rows, dims, [width] * hidden_layers

    def fits(dim: int, width: int) -> int:
        """Most buckets per hashed group at (dim, width) within the budget (0: none)."""
        rows, dims, hidden = build(dim, width, 0)
        base, _ = _bytes(rows, dims, hidden, num_classes, bits)
        per_bucket = hashed_groups * embedding_bytes(1, dim, bits=bits)
        return max(0, (budget - base) // per_bucket) if per_bucket else 0

    smallest = build(8, HIDDEN[0], MIN_BUCKETS)
    least, _ = _bytes(*smallest, num_classes, bits)
    if budget < least:
        raise UserError(f"a budget of {budget} bytes fits no model; the smallest "
                        f"({MIN_BUCKETS} buckets x 8 dims per group, hidden {HIDDEN[0]}, "
                        f"{bits}-bit tables) takes {least} bytes")
    width = HIDDEN[0]
    for w in HIDDEN:
        mlp = 4 * mlp_params(len(fixed) * FIXED_DIM + 16 * hashed_groups, [w] * hidden_layers,
                             num_classes)
        if mlp <= budget // 4 and fits(8, w) >= MIN_BUCKETS:
            width = w
    dim = 16 if fits(16, width) >= WIDE_MIN_BUCKETS else 8
    buckets = fits(dim, width)
    rows, dims, hidden = build(dim, width, buckets)
    total, emb = _bytes(rows, dims, hidden, num_classes, bits)
    float_total, _ = _bytes(rows, dims, hidden, num_classes, 32)
    assert total <= budget
    return Plan(budget, bits, tuple(rows), tuple(dims), tuple(hidden), num_classes, total,
                float_total, emb)
