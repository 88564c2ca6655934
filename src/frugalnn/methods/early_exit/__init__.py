"""Early-exit networks that really exit (SDN heads, Zero-Time-Waste cascades and ensembles).

The submodules named in ``frugalnn.plugins`` register the ``early_exit`` transformation, so that
:func:`frugalnn.train.checkpoint.load_model` can rebuild converted models.
"""

from frugalnn.utils.lazy import lazy_attributes

#: Public name -> submodule that defines it (imported on first use: no torch at import).
_EXPORTS = {
    "EarlyExitModel": ".model",
    "FinalEnsemble": ".model",
    "GeometricEnsemble": ".model",
    "POLICIES": ".policies",
    "attach_heads": ".model",
    "parse_positions": ".model",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
