"""Adaptive computation modules (ACM, Wójcik et al., AAAI 2025): per-token compute.

An FFN becomes N small learners whose outputs add up, and a per-token gate
decides how many run (:mod:`.module`); :mod:`.convert` converts a model and
provides the budget knob ``q``; :mod:`.training` holds the three training
stages; :mod:`.recipe` puts them together (``ACMConfig``, ``acm``,
``run_acm``) for the CLI, the demo and the benchmark. Importing this package
registers the ``acm`` transformation used when checkpoints are loaded.
"""

from frugalnn.utils.lazy import lazy_attributes

#: Public name -> submodule that defines it (imported on first use: no torch at import).
_EXPORTS = {
    "ACMConfig": ".recipe",
    "ACMFFN": ".module",
    "ACMModel": ".convert",
    "ACMRun": ".recipe",
    "ACMTrainConfig": ".training",
    "DEFAULT_QS": ".convert",
    "acm": ".recipe",
    "convert_to_acm": ".convert",
    "gate_labels": ".training",
    "learner_layout": ".module",
    "rebuild_acm": ".convert",
    "run_acm": ".recipe",
    "train_acm": ".training",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
