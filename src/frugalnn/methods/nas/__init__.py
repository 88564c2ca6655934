"""Hardware-aware architecture search, ProxylessNAS-style.

A supernet of candidate ops is trained one sampled path at a time; the
architecture parameters are learned with binary-gate gradients and a latency
term predicted from a lookup table measured on the target device; the most
probable path becomes a plain network (``create_model("nas_net", arch=...)``).

Modules: :mod:`ops` (candidates), :mod:`space` (search space, architecture
JSON), :mod:`net` (the derived plain network), :mod:`supernet`,
:mod:`latency` (lookup table), :mod:`search` (the loop), :mod:`derive`.
This ``__init__`` stays import-light because ``frugalnn.models.zoo`` imports
:mod:`frugalnn.methods.nas.net`; NAS registers no model transformation (a derived
network is a new model, rebuilt from its ``arch`` argument).
"""

from frugalnn.methods.nas.ops import DEFAULT_CANDIDATES, build_op, parse_op
from frugalnn.methods.nas.space import SearchSpace, arch_from_dict, arch_to_dict

__all__ = ["DEFAULT_CANDIDATES", "SearchSpace", "arch_from_dict", "arch_to_dict", "build_op",
           "parse_op"]
