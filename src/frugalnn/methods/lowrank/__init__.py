"""Low-rank compression (SVD, CP, Tucker-2, tensor-train) and NMF token mixing.

Importing the package registers the ``lowrank`` and ``nmf_mixing``
transformations, so checkpoints of compressed models load by name.
"""

from frugalnn.methods.lowrank.compress import compress_model, find_layers, rebuild_lowrank
from frugalnn.methods.lowrank.layers import (
    CPConv2d,
    SVDConv1x1,
    SVDLinear,
    TTConv2d,
    TuckerConv2d,
    from_conv,
)
from frugalnn.methods.lowrank.nmf import NMFMixer, replace_attention
from frugalnn.methods.lowrank.rank import Criterion, select_ranks
from frugalnn.methods.lowrank.vbmf import evbmf

__all__ = [
    "CPConv2d",
    "Criterion",
    "NMFMixer",
    "SVDConv1x1",
    "SVDLinear",
    "TTConv2d",
    "TuckerConv2d",
    "compress_model",
    "evbmf",
    "find_layers",
    "from_conv",
    "rebuild_lowrank",
    "replace_attention",
    "select_ranks",
]
