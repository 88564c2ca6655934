"""Early-exit networks that really exit (SDN heads, Zero-Time-Waste cascades and ensembles).

Importing this package registers the ``early_exit`` transformation, so that
:func:`frugalnn.train.checkpoint.load_model` can rebuild converted models.
"""

from frugalnn.methods.early_exit.model import (
    EarlyExitModel,
    FinalEnsemble,
    GeometricEnsemble,
    attach_heads,
    parse_positions,
)
from frugalnn.methods.early_exit.policies import POLICIES

__all__ = [
    "POLICIES",
    "EarlyExitModel",
    "FinalEnsemble",
    "GeometricEnsemble",
    "attach_heads",
    "parse_positions",
]
