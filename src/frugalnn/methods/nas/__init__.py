"""Hardware-aware architecture search, ProxylessNAS-style.

A supernet of candidate ops is trained one sampled path at a time; the
architecture parameters are learned with binary-gate gradients and a latency
term predicted from a lookup table measured on the target device; the most
probable path becomes a plain network (``create_model("nas_net", arch=...)``).

Modules: :mod:`ops` (candidates), :mod:`space` (search space, architecture
JSON), :mod:`net` (the derived plain network), :mod:`supernet`,
:mod:`latency` (lookup table), :mod:`search` (the loop), :mod:`derive`.
NAS registers no model transformation (a derived
network is a new model, rebuilt from its ``arch`` argument).
"""

from frugalnn.utils.lazy import lazy_attributes

#: Public name -> submodule that defines it (imported on first use: no torch at import).
_EXPORTS = {
    "DEFAULT_CANDIDATES": ".ops",
    "SearchSpace": ".space",
    "arch_from_dict": ".space",
    "arch_to_dict": ".space",
    "build_op": ".ops",
    "parse_op": ".ops",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
