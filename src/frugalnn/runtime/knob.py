"""A budget knob as a graph input: one graph for every value of the knob.

An input-dependent layer whose saving comes from gathering the tokens that
need work (experts, learners) can be exported as one graph when its
data-dependent choices are written as tensor ops (``nonzero``, ``index_select``,
``index_add``) rather than Python branches. The knob value (MoE's ``tau``,
ACM's ``q``) then enters the graph as an input with one value per row, so it
stays settable after export. A method's export form reads the value from a
:class:`KnobHolder` that :class:`WithKnob` fills for the duration of a call;
:class:`KnobRunner` runs such an export.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from frugalnn.errors import UserError

__all__ = ["KnobHolder", "KnobRunner", "KnobSettings", "WithKnob", "knob_of_rows"]


class KnobHolder:
    """The knob tensor (one value per row) while the wrapped model runs."""

    value: torch.Tensor | None = None


def knob_of_rows(holder: KnobHolder, like: torch.Tensor, dims: int) -> torch.Tensor:
    """The knob shaped ``(rows, 1, ..., 1)`` to broadcast against a ``dims``-d tensor."""
    value = holder.value
    if value is None:
        raise RuntimeError("the export form of a layer ran outside WithKnob")
    return value.to(like.dtype).view(-1, *([1] * (dims - 1)))


class WithKnob(nn.Module):
    """``model(x)`` with the knob given as a second input ``(rows,)``."""

    def __init__(self, model: nn.Module, holder: KnobHolder) -> None:
        super().__init__()
        self.model = model
        self.holder = holder

    def forward(self, x: torch.Tensor, knob: torch.Tensor) -> torch.Tensor:
        self.holder.value = knob
        try:
            return self.model(x)
        finally:
            self.holder.value = None


class KnobSettings:
    """The budget knob of an exported model whose knob is read at run time.

    ``loop`` (the manifest's) gives ``budget_name``, ``values`` (the sweep),
    ``full`` and the allowed ``low``/``high`` range.
    """

    def __init__(self, loop: dict[str, Any]) -> None:
        self.budget_name = str(loop["budget_name"])
        self.values = [float(v) for v in loop["values"]]
        self.full = float(loop["full"])
        self.low, self.high = float(loop["low"]), float(loop["high"])
        self.value = self.full

    def budget_values(self) -> list[float]:
        return list(self.values)

    def full_budget(self) -> float:
        return self.full

    def set_budget(self, value: float) -> None:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{self.budget_name} must be a number, got {value!r}") from None
        if not self.low <= v <= self.high:
            raise UserError(f"{self.budget_name} must be in [{self.low:g}, {self.high:g}] "
                            f"for this export, got {value!r}")
        self.value = v


class KnobRunner(KnobSettings):
    """Runs a :class:`WithKnob` export (one graph); the knob is fed with every call."""

    def __init__(self, manifest: dict[str, Any], graphs: dict[str, Any]) -> None:
        super().__init__(manifest["loop"])
        self.graph = graphs["model"]

    def __call__(self, x: Any) -> torch.Tensor:
        from frugalnn.utils.batch import batch_len

        knob = torch.full((batch_len(x),), self.value)
        if isinstance(x, dict):  # a dict input (in-graph layout): fed by name, knob last
            return self.graph({**x, self.graph.input_names[-1]: knob})
        return self.graph(x, knob)
