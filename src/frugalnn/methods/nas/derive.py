"""From a searched supernet to a plain network and its readable architecture file.

The most probable op of every choice block is kept; ``zero`` blocks vanish.
:func:`extract_network` also copies the supernet's weights of the chosen
paths into the plain network (useful as a starting point and as a check that
derivation is exact: the plain network computes what the supernet computes
on that path). ProxylessNAS retrains the derived network from scratch, which
is what the CLI and benchmarks do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from frugalnn.errors import UserError
from frugalnn.methods.nas.net import NASNet
from frugalnn.methods.nas.space import SearchSpace, arch_to_dict
from frugalnn.methods.nas.supernet import Supernet
from frugalnn.utils.io import write_bytes_atomic, write_text_atomic

__all__ = [
    "derive_arch",
    "extract_network",
    "load_search_state",
    "save_arch",
    "save_search_state",
]


def derive_arch(net: Supernet, **extra: Any) -> dict[str, Any]:
    """The argmax architecture of ``net`` as a readable dict."""
    return arch_to_dict(net.space, net.argmax_arch(), probabilities=net.probabilities(), **extra)


def extract_network(net: Supernet, ops: list[str] | None = None) -> NASNet:
    """A plain ``NASNet`` on the path ``ops`` (default argmax) with the supernet's weights."""
    ops = ops or net.argmax_arch()
    plain = NASNet(net.space, ops)
    plain.stem.load_state_dict(net.stem.state_dict())
    plain.head.load_state_dict(net.head.state_dict())
    kept = iter(plain.blocks)
    for block, op in zip(net.blocks, ops):
        if op == "zero":
            continue
        src = block.mixed.candidates[block.mixed.names.index(op)]
        next(kept).op.load_state_dict(src.state_dict())
    return plain.to(next(net.parameters()).device)


def save_arch(arch: dict[str, Any], path: str | os.PathLike[str], force: bool = False) -> Path:
    """Write the architecture as JSON (or YAML for ``.yaml``/``.yml``), atomically."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(arch, sort_keys=False)
    else:
        text = json.dumps(arch, indent=1)
    return write_text_atomic(path, text)


def load_search_state(run_dir: str | os.PathLike[str]) -> Supernet:
    """Rebuild a supernet (weights, alphas, pruning masks) from a search run directory."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    cfg_path = run_dir / "search_space.json"
    weights = run_dir / "checkpoint" / "supernet.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise UserError(f"{run_dir} is not a `frugalnn nas search` run directory "
                        "(missing search_space.json or checkpoint/supernet.safetensors)")
    space = SearchSpace.from_dict(json.loads(cfg_path.read_text()))
    net = Supernet(space)
    state = load_file(str(weights))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"supernet checkpoint in {run_dir} does not match its search space")
    net.set_mode("argmax")
    return net


def save_search_state(net: Supernet, run_dir: str | os.PathLike[str]) -> None:
    """Save the supernet (weights + alphas + masks) and its space, atomically."""
    from safetensors.torch import save

    run_dir = Path(run_dir)
    (run_dir / "checkpoint").mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    target = run_dir / "checkpoint" / "supernet.safetensors"
    write_bytes_atomic(target, save(state))
    write_text_atomic(run_dir / "search_space.json", json.dumps(net.space.to_dict(), indent=1))
