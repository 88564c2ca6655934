"""Adaptive computation modules (ACM, Wójcik et al., AAAI 2025): per-token compute.

An FFN becomes N small learners whose outputs add up, and a per-token gate
decides how many run (:mod:`.module`); :mod:`.convert` converts a model and
provides the budget knob ``q``; :mod:`.training` holds the three training
stages. Importing this package registers the ``acm`` transformation used when
checkpoints are loaded.
"""

from frugalnn.methods.acm.convert import DEFAULT_QS, ACMModel, convert_to_acm, rebuild_acm
from frugalnn.methods.acm.module import ACMFFN, learner_layout
from frugalnn.methods.acm.training import ACMTrainConfig, gate_labels, train_acm

__all__ = [
    "ACMFFN",
    "DEFAULT_QS",
    "ACMModel",
    "ACMTrainConfig",
    "convert_to_acm",
    "gate_labels",
    "learner_layout",
    "rebuild_acm",
    "train_acm",
]
