"""CLI: ``frugalnn moe convert ...`` and ``frugalnn sparsity ...``.

``moe convert`` turns a trained transformer into a mixture-of-experts model
(optionally enforcing activation sparsity first), trains its routers, writes
the checkpoint (loadable by ``frugalnn evaluate``), sweeps the knob on the
evaluation split and writes records, summary and report into one run
directory. ``sparsity`` writes the activation-sparsity table and plots of any
model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from frugalnn.cli.common import (
    add_data_flags,
    add_model_flags,
    add_run_flags,
    args_config,
    check_out,
    check_positive,
    load_base_model,
    parse_model_args,
    positive,
    print_budget_summary,
    random_subset,
    shuffled_loader,
    start_run,
)
from frugalnn.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    moe = subparsers.add_parser("moe", help="dense-to-mixture-of-experts conversion")
    moe_sub = moe.add_subparsers(dest="moe_command", metavar="SUBCOMMAND")
    c = moe_sub.add_parser(
        "convert", help="split FFNs into experts, train routers, sweep tau, write a run dir"
    )
    add_model_flags(c)
    add_data_flags(c, train_help="split for routers/sparsity (train)")
    size = c.add_mutually_exclusive_group(required=True)
    size.add_argument("--experts", type=int, help="experts per FFN")
    size.add_argument("--expert-size", type=int, help="neurons per expert")
    c.add_argument("--split", default="kmeans", choices=("kmeans", "coactivation", "sequential"),
                   help="how neurons are grouped into experts (default kmeans)")
    c.add_argument("--router-epochs", type=int, default=2, help="router training epochs (2)")
    c.add_argument("--router-lr", type=float, default=1e-3, help="router learning rate")
    c.add_argument("--router-hidden", type=int, default=128, help="router hidden width (128)")
    c.add_argument("--sparsify", action="store_true",
                   help="first replace GELU by ReLU and fine-tune with a Hoyer sparsity penalty")
    c.add_argument("--sparsify-epochs", type=int, default=1, help="sparsity fine-tuning epochs")
    c.add_argument("--sparsity-weight", type=float, default=0.2,
                   help="weight of the (width-normalised) squared Hoyer penalty (0.2)")
    c.add_argument("--sparsify-lr", type=float, default=1e-4, help="fine-tuning learning rate")
    c.add_argument("--finetune-epochs", type=int, default=0,
                   help="routed fine-tuning after conversion: train the MoE model at taus "
                        "drawn from --finetune-taus, distilling from the dense model, then "
                        "re-fit the routers (default 0: convert only, as D2DMoE)")
    c.add_argument("--finetune-taus", default="0.4,0.5,0.6",
                   help="comma-separated taus drawn per training step (0.4,0.5,0.6)")
    c.add_argument("--finetune-lr", type=float, default=1e-4, help="fine-tuning learning rate")
    c.add_argument("--finetune-kd-weight", type=float, default=0.5,
                   help="weight of distillation from the dense model in [0, 1] (0.5)")
    c.add_argument("--mode", default="dynamic", choices=("dynamic", "topk"),
                   help="routing rule of the saved model (dynamic-k: knob tau; topk: knob k)")
    c.add_argument("--budgets", nargs="+", help="tau values to sweep (default 0,0.25,...,1)")
    c.add_argument("--compare-topk", action="store_true",
                   help="also evaluate top-k routing into RUN_DIR/topk")
    c.add_argument("--latency-repeats", type=int, default=10, help="timed calls per budget")
    add_run_flags(c)
    c.set_defaults(func=_convert)
    moe.set_defaults(func=lambda _a: moe.print_help() or 2)

    s = subparsers.add_parser("sparsity", help="activation-sparsity table and plots of a model")
    add_model_flags(s, model_help="registry name")
    s.add_argument("--data", required=True, help="dataset name")
    s.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    s.add_argument("--split", default="test", help="split (default test)")
    s.add_argument("--limit", type=int, default=1024,
                   help="random examples analysed (default 1024)")
    s.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    s.add_argument("--eps", type=float, default=1e-3, help="near-zero threshold (1e-3)")
    s.add_argument("--all-activations", action="store_true",
                   help="every activation call, not only FFN activations of transformers")
    s.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--force", action="store_true", help="overwrite an existing --out")
    s.set_defaults(func=_sparsity)


def _sparsity(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from frugalnn.analysis.sparsity import activation_sparsity
    from frugalnn.data import get_dataset
    from frugalnn.utils.io import write_json_atomic

    positive(args.limit, "--limit")
    positive(args.batch_size, "--batch-size")
    out = Path(args.out)
    check_out(out, args.force)
    model = load_base_model(args.model, args.checkpoint, parse_model_args(args.model_arg),
                            args.device).eval()
    data = random_subset(get_dataset(args.data, args.split, args.data_dir), args.limit, 0)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False)
    report = activation_sparsity(
        model, loader, eps=args.eps, device=args.device,
        only_ffn=False if args.all_activations else None,
        meta={"model": args.model, "checkpoint": args.checkpoint, "data": args.data,
              "split": args.split},
    )
    report.save(out)
    write_json_atomic(out / "config.json", args_config(args))
    print(report.table(), end="")
    print(f"written: {out / 'sparsity.md'}, {out / 'sparsity.json'}, plots in {out}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from frugalnn.data import get_dataset
    from frugalnn.evaluation import evaluate_into
    from frugalnn.methods.moe.convert import DEFAULT_TAUS, convert_to_moe
    from frugalnn.methods.moe.report import write_extras
    from frugalnn.methods.moe.sparsify import enforce_sparsity
    from frugalnn.models.base import require_ffn_sites
    from frugalnn.report import write_run_report
    from frugalnn.train.checkpoint import save_checkpoint

    check_positive(((args.train_limit, "--train-limit"), (args.eval_limit, "--eval-limit"),
                    (args.batch_size, "--batch-size"), (args.threads, "--threads"),
                    (args.latency_repeats, "--latency-repeats")))
    if args.router_epochs < 0 or args.sparsify_epochs < 0 or args.finetune_epochs < 0:
        raise UserError("--router-epochs, --sparsify-epochs and --finetune-epochs must be >= 0")
    taus = [float(v) for item in (args.budgets or []) for v in item.split(",") if v.strip()]
    taus = taus or list(DEFAULT_TAUS)
    ft_taus = _parse_taus(args.finetune_taus)
    if not 0.0 <= args.finetune_kd_weight <= 1.0:
        raise UserError(f"--finetune-kd-weight must lie in [0, 1], got {args.finetune_kd_weight}")
    if args.finetune_epochs and args.router_epochs == 0:
        raise UserError("--finetune-epochs needs trained routers; set --router-epochs >= 1")
    out = start_run(args)

    model = load_base_model(args.model, args.checkpoint, parse_model_args(args.model_arg),
                            args.device).eval()
    train = random_subset(
        get_dataset(args.data, args.train_split, args.data_dir), args.train_limit, args.seed
    )
    test = random_subset(
        get_dataset(args.data, args.eval_split, args.data_dir), args.eval_limit, args.seed
    )
    train_loader = shuffled_loader(train, args.batch_size, args.seed)
    progress = not args.no_progress
    out.mkdir(parents=True, exist_ok=True)
    # A model without FFNs fails here, before any sparsity fine-tuning.
    require_ffn_sites(model, "MoE conversion")
    if args.sparsify:
        print("enforcing activation sparsity (GELU -> ReLU, Hoyer penalty, distillation)")
        enforce_sparsity(
            model, train_loader, epochs=args.sparsify_epochs, lam=args.sparsity_weight,
            lr=args.sparsify_lr, device=args.device, seed=args.seed, progress=progress,
        )
    print("splitting FFNs into experts and training routers")
    moe = convert_to_moe(
        model, num_experts=args.experts, expert_size=args.expert_size, split=args.split,
        loader=train_loader, router_epochs=args.router_epochs, router_lr=args.router_lr,
        router_hidden=args.router_hidden, mode=args.mode, taus=taus, seed=args.seed,
        device=args.device, progress=progress,
    )
    if args.finetune_epochs:
        from frugalnn.methods.moe.finetune import finetune_routed

        print(f"routed fine-tuning at tau in {ft_taus}, then re-fitting the routers")
        finetune_routed(
            moe, train_loader, taus=ft_taus, epochs=args.finetune_epochs, lr=args.finetune_lr,
            kd_weight=args.finetune_kd_weight, router_epochs=args.router_epochs,
            router_lr=args.router_lr, device=args.device, seed=args.seed, progress=progress,
        )
    config = args_config(args, "moe convert")
    save_checkpoint(out / "checkpoint", moe, {"config": config})
    records = evaluate_into(
        moe, test, out, method=f"moe-{args.mode}", batch_size=args.batch_size,
        threads=args.threads, device=args.device, latency_batch_sizes=(1, args.batch_size),
        latency_repeats=args.latency_repeats, config=config, force=args.force,
        progress=progress,
    )
    runs = [out]
    if args.compare_topk and args.mode == "dynamic":
        moe.set_mode("topk")
        evaluate_into(
            moe, test, out / "topk", method="moe-topk", batch_size=args.batch_size,
            threads=args.threads, device=args.device, latency_batch_sizes=(1, args.batch_size),
            latency_repeats=args.latency_repeats, config={**config, "mode": "topk"},
            force=args.force, progress=progress,
        )
        moe.set_mode(args.mode)
        runs.append(out / "topk")
    write_extras(moe, runs, out / "extras")
    for run in runs:
        write_run_report(run)
    print_budget_summary(records, moe.budget_name, width=6)
    print(f"checkpoint: {out / 'checkpoint'}  (frugalnn evaluate {out} --data {args.data} ...)")
    print(f"report:     {out / 'report' / 'report.html'}")
    return 0


def _parse_taus(text: str) -> list[float]:
    """``"0.4,0.6"`` -> ``[0.4, 0.6]``, each checked to lie in [0, 1]."""
    try:
        taus = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--finetune-taus must be comma-separated numbers, got {text!r}") from None
    if not taus or not all(0.0 <= t <= 1.0 for t in taus):
        raise UserError(f"--finetune-taus must be numbers in [0, 1], got {text!r}")
    return taus
