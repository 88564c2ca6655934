"""The budget-knob contract shared by every method.

A transformed model that trades accuracy for compute at run time exposes one
knob. Evaluation sweeps it (``budget_values()``), setting each value with
``set_budget``; at ``full_budget()`` the model reproduces the original model's
outputs (tests check this invariant). A static model has no knob and is
evaluated at a single budget.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Budgeted(Protocol):
    budget_name: str

    def budget_values(self) -> list[float]:
        """Default sweep, cheapest to most expensive."""
        ...

    def set_budget(self, value: float) -> None:
        """Set the knob; raises ``UserError`` for a value outside its range."""
        ...

    def full_budget(self) -> float:
        """The knob value at which the model computes exactly the original outputs."""
        ...


def has_budget(model: object) -> bool:
    return isinstance(model, Budgeted)
