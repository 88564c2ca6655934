"""Per-example cost ledger for input-dependent models.

A static model costs the same for every input, so one FLOP count describes it.
A dynamic model (early exits, mixture-of-experts, per-token learners) does not:
the accepted figure is the *average per-example cost over the evaluation set*,
and per-example costs are also what lets us rank examples by difficulty.

The ledger is an explicit account rather than a tracer: each dynamic module
knows what it executed and charges that cost, in FLOPs, to the examples that
caused it. Costs of the static parts are measured once (with
:func:`frugalnn.cost.count.measure`) and charged per example. Outside an active
ledger, :func:`charge` and :func:`record` are no-ops, so instrumented modules
cost nothing extra at normal inference.

Rows and examples
-----------------
Inside a model, a tensor's leading dimension holds *rows*. At the top level a
row is an example of the evaluated batch. A module that runs part of the
network on a subset of rows (an early exit shrinking the batch) wraps that call
in ``with ledger.subset(idx):`` so that charges made inside land on the right
examples. A module that works on tokens passes ``rows`` per token (the owning
example of each token), and the ledger sums them.

Example: a toy dynamic module that runs an expensive branch only on inputs
with a positive first feature::

    class MaybeDeep(DynamicModule):
        def __init__(self):
            super().__init__()
            self.cheap = nn.Linear(8, 8)
            self.deep = nn.Linear(8, 8)

        def forward(self, x):
            out = self.cheap(x)
            charge(2 * 8 * 8)                       # cheap ran for every row
            idx = (x[:, 0] > 0).nonzero().squeeze(1)
            if idx.numel():
                with subset(idx):
                    out = out.index_add(0, idx, self.deep(x[idx]))
                    charge(2 * 8 * 8)               # deep ran for these rows only
            return out

    ledger = CostLedger(batch_size=x.shape[0])
    with ledger:
        model(x)
    ledger.flops        # tensor of per-example FLOPs
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import nn

__all__ = [
    "CostLedger",
    "DynamicModule",
    "active_ledger",
    "charge",
    "record",
    "subset",
]

_ACTIVE: ContextVar[CostLedger | None] = ContextVar("frugalnn_active_ledger", default=None)


class DynamicModule(nn.Module):
    """Marker base class: a module whose cost depends on its input.

    A ``DynamicModule`` charges the active ledger itself for everything it runs,
    its children included. Static accounting (:func:`static_flops_excluding_dynamic`)
    therefore leaves its whole subtree out so nothing is counted twice.
    """


class CostLedger:
    """Accumulates FLOPs (and method decisions) per example of one batch.

    Use as a context manager around the forward pass; after it, ``flops``
    holds a float64 tensor of shape ``(batch_size,)`` and ``decisions`` a dict
    of per-example float64 tensors (NaN where an example never reached the
    module that records that decision).
    """

    def __init__(self, batch_size: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.flops = torch.zeros(batch_size, dtype=torch.float64)
        self.decisions: dict[str, torch.Tensor] = {}
        # Stack of LongTensors mapping current rows -> example indices of the batch.
        self._row_maps: list[torch.Tensor] = [torch.arange(batch_size)]
        self._token: object | None = None

    # -- activation -----------------------------------------------------------
    def __enter__(self) -> CostLedger:
        if self._token is not None:
            raise RuntimeError("this CostLedger is already active")
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.reset(self._token)  # type: ignore[arg-type]
        self._token = None

    # -- row mapping ------------------------------------------------------------
    @property
    def rows(self) -> torch.Tensor:
        """Example index of every current row."""
        return self._row_maps[-1]

    @contextlib.contextmanager
    def subset(self, idx: torch.Tensor) -> Iterator[None]:
        """Charges inside refer to rows ``idx`` of the current rows."""
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1).cpu()
        self._row_maps.append(self._row_maps[-1][idx])
        try:
            yield
        finally:
            self._row_maps.pop()

    def _examples(self, rows: torch.Tensor | None) -> torch.Tensor:
        current = self._row_maps[-1]
        if rows is None:
            return current
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1).cpu()
        return current[rows]

    # -- charging ---------------------------------------------------------------
    def charge(self, flops: float | torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Add ``flops`` to the examples owning ``rows`` (default: every current row).

        ``flops`` is a scalar (the same amount for each listed row) or a tensor
        with one value per listed row. Rows may repeat (e.g. one row per
        token); repeated charges add up.
        """
        examples = self._examples(rows)
        if examples.numel() == 0:
            return
        amount = torch.as_tensor(flops, dtype=torch.float64).detach().cpu()
        if amount.dim() == 0:
            amount = amount.expand(examples.numel())
        amount = amount.reshape(-1)
        if amount.numel() != examples.numel():
            raise ValueError(
                f"charge got {amount.numel()} amounts for {examples.numel()} rows"
            )
        self.flops.index_add_(0, examples, amount)

    def record(
        self, name: str, values: float | torch.Tensor, rows: torch.Tensor | None = None
    ) -> None:
        """Record a method decision per example (e.g. the exit index).

        Recording the same name twice for an example overwrites it; use
        per-layer names for per-layer decisions.
        """
        examples = self._examples(rows)
        col = self.decisions.get(name)
        if col is None:
            col = torch.full((self.batch_size,), float("nan"), dtype=torch.float64)
            self.decisions[name] = col
        vals = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
        if vals.dim() == 0:
            vals = vals.expand(examples.numel())
        col[examples] = vals.reshape(-1)


def active_ledger() -> CostLedger | None:
    """The ledger of the enclosing ``with CostLedger(...)`` block, if any."""
    return _ACTIVE.get()


def charge(flops: float | torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """Charge the active ledger (no-op when none is active)."""
    ledger = _ACTIVE.get()
    if ledger is not None:
        ledger.charge(flops, rows)


def record(name: str, values: float | torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """Record a decision in the active ledger (no-op when none is active)."""
    ledger = _ACTIVE.get()
    if ledger is not None:
        ledger.record(name, values, rows)


@contextlib.contextmanager
def subset(idx: torch.Tensor) -> Iterator[None]:
    """``ledger.subset(idx)`` on the active ledger; does nothing without one."""
    ledger = _ACTIVE.get()
    if ledger is None:
        yield
        return
    with ledger.subset(idx):
        yield
