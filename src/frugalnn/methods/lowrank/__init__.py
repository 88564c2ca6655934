"""Low-rank compression (SVD, CP, Tucker-2, tensor-train) and NMF token mixing.

The submodules named in ``frugalnn.plugins`` register the ``lowrank`` and ``nmf_mixing``
transformations, so checkpoints of compressed models load by name.
"""

from frugalnn.utils.lazy import lazy_attributes

#: Public name -> submodule that defines it (imported on first use: no torch at import).
_EXPORTS = {
    "CPConv2d": ".layers",
    "Criterion": ".rank",
    "NMFMixer": ".nmf",
    "SVDConv1x1": ".layers",
    "SVDLinear": ".layers",
    "TTConv2d": ".layers",
    "TuckerConv2d": ".layers",
    "compress_model": ".compress",
    "evbmf": ".vbmf",
    "find_layers": ".compress",
    "from_conv": ".layers",
    "rebuild_lowrank": ".compress",
    "replace_attention": ".nmf",
    "select_ranks": ".rank",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
