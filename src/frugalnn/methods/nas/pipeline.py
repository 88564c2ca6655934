"""The steps of the NAS recipe: search a supernet, write its extras, retrain.

:mod:`frugalnn.methods.nas.recipe` composes them (with the latency table and
the splits) into the one pipeline the CLI, the demo and the benchmarks run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from frugalnn.errors import UserError
from frugalnn.methods.nas.derive import derive_arch, save_arch, save_search_state
from frugalnn.methods.nas.latency import LatencyModel, LatencyTable
from frugalnn.methods.nas.search import SearchConfig, SearchResult, run_search, short_arch
from frugalnn.methods.nas.space import SearchSpace
from frugalnn.methods.nas.supernet import Supernet
from frugalnn.utils.io import write_json_atomic, write_text_atomic

__all__ = ["retrain", "search", "write_search_extras"]


def search(
    space: SearchSpace,
    table: LatencyTable,
    weight_set: Dataset,
    arch_set: Dataset,
    cfg: SearchConfig,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[Supernet, SearchResult]:
    """Build a supernet and search: weight steps on ``weight_set``, architecture
    steps (and the per-epoch argmax accuracy) on ``arch_set``, a validation
    split carved from the training data, never the test set."""
    if len(arch_set) == 0:  # type: ignore[arg-type]
        raise UserError("the architecture search needs a non-empty validation split")
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(weight_set, batch_size=batch_size, shuffle=True, generator=gen,
                              drop_last=len(weight_set) > batch_size)  # type: ignore[arg-type]
    arch_loader = DataLoader(arch_set, batch_size=batch_size, shuffle=True,
                             generator=torch.Generator().manual_seed(cfg.seed + 1))
    torch.manual_seed(cfg.seed)
    net = Supernet(space)
    result = run_search(net, LatencyModel(space, table), train_loader, arch_loader, cfg,
                        device=device, progress=progress)
    return net, result


def write_search_extras(run_dir: Path, net: Supernet, result: SearchResult,
                        cfg: SearchConfig, table: LatencyTable, force: bool = False) -> Path:
    """Supernet state, ``arch.json``, ``search.json`` and ``extras/`` (table + plot)."""
    save_search_state(net, run_dir / "supernet")
    arch = derive_arch(net, predicted_ms=result.predicted_ms,
                       latency_target_ms=cfg.latency_target_ms,
                       latency_device=table.device)
    arch_path = save_arch(arch, run_dir / "arch.json", force=force)
    write_json_atomic(run_dir / "search.json",
                      {"config": vars(cfg), "result": result.to_dict(),
                       "latency_table": str(table.path), "architecture_chosen_on": "validation"})
    extras = run_dir / "extras"
    extras.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Architecture search (ProxylessNAS-style)",
        "",
        f"Latency target {cfg.latency_target_ms:.3f} ms on {table.device['hardware']} "
        f"({table.device['device']}, batch {table.device['batch_size']}, "
        f"threads {table.device['threads']}); loss `{cfg.loss}`.",
        "",
        "| epoch | phase | argmax architecture | predicted ms | E[lat] ms | argmax acc |",
        "|---|---|---|---|---|---|",
    ]
    for row in result.history:
        lines.append(f"| {row['epoch']} | {row['phase']} | `{short_arch(row['arch'])}` | "
                     f"{row['predicted_ms']:.3f} | {row['expected_ms']:.3f} | "
                     f"{100 * row['argmax_valid_acc']:.1f} % |")
    lines += ["", "Final choice per block (probability):", ""]
    for i, (op, probs) in enumerate(zip(result.ops, result.probabilities)):
        lines.append(f"- block {i}: `{op}` ({probs[op]:.2f})")
    write_text_atomic(extras / "nas_search.md", "\n".join(lines) + "\n")
    _plot_probabilities(result, extras / "nas_probabilities.png")
    return arch_path


def _plot_probabilities(result: SearchResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({n for p in result.probabilities for n in p})
    grid = [[p.get(n, float("nan")) for p in result.probabilities] for n in names]
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(result.probabilities), 0.4 * len(names) + 1))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks(range(len(result.probabilities)))
    ax.set_xlabel("choice block")
    ax.set_title("op probabilities after search")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def retrain(arch: dict[str, Any], train_set: Dataset, *, epochs: int, batch_size: int = 64,
            lr: float = 0.05, seed: int = 0, device: str | torch.device = "cpu",
            run_dir: Path | None = None, progress: bool = True) -> torch.nn.Module:
    """Train the derived plain network from scratch (ProxylessNAS retrains, no inheritance)."""
    from frugalnn.models import create_model
    from frugalnn.train import fit

    torch.manual_seed(seed)
    model = create_model("nas_net", arch=arch)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    fit(model, loader, epochs=epochs, optimizer="sgd", lr=lr, nesterov=True,
        weight_decay=4e-5, schedule="cosine", seed=seed, run_dir=run_dir, progress=progress,
        device=device)
    return model.eval()
