"""CLI: ``frugalnn acm convert MODEL --checkpoint RUN --data NAME --out RUN_DIR``.

Converts the FFNs of a trained transformer into adaptive computation modules,
runs the three training stages, writes the checkpoint (loadable by
``frugalnn evaluate``), sweeps the knob ``q`` on the evaluation split and
writes records, summary, report and compute maps into one run directory.
"""

from __future__ import annotations

import argparse
import copy

from frugalnn.cli.common import (
    add_data_flags,
    add_model_flags,
    add_run_flags,
    args_config,
    check_positive,
    load_base_model,
    parse_model_args,
    print_budget_summary,
    shuffled_loader,
    start_run,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    acm = subparsers.add_parser("acm", help="adaptive computation modules (per-token learners)")
    sub = acm.add_subparsers(dest="acm_command", metavar="SUBCOMMAND")
    c = sub.add_parser("convert", help="FFNs -> N learners + gate, train 3 stages, sweep q")
    add_model_flags(c)
    add_data_flags(c, random=False)
    c.add_argument("--learners", type=int, default=4, help="learners per FFN (4)")
    c.add_argument("--gate-hidden", type=int, help="gate hidden width (default dim/4)")
    c.add_argument("--sites", nargs="+", help="FFN sites to convert (default all)")
    c.add_argument("--distill-epochs", type=int, default=2, help="stage I epochs (2)")
    c.add_argument("--gate-epochs", type=int, default=1, help="stage II epochs (1)")
    c.add_argument("--finetune-epochs", type=int, default=1, help="stage III epochs (1)")
    c.add_argument("--distill-lr", type=float, default=1e-3, help="stage I learning rate")
    c.add_argument("--gate-lr", type=float, default=3e-3, help="stage II learning rate")
    c.add_argument("--finetune-lr", type=float, default=1e-4, help="stage III learning rate")
    c.add_argument("--ratio", type=float, default=1.2,
                   help="gate label: smallest k with err(k)/err(k+1) < RATIO (1.2)")
    c.add_argument("--target", type=float, default=0.5,
                   help="stage III target fraction of learners run (0.5)")
    c.add_argument("--budget-weight", type=float, default=1.0, help="weight of the budget loss")
    c.add_argument("--kd-weight", type=float, default=0.5,
                   help="stage III: weight of distillation from the dense model's logits (0.5)")
    c.add_argument("--kd-temperature", type=float, default=2.0,
                   help="stage III distillation temperature (2)")
    c.add_argument("--budgets", nargs="+", help="q values to sweep (default 0,0.1,...,1)")
    c.add_argument("--map-images", type=int, default=8, help="images in the compute maps (8)")
    c.add_argument("--latency-repeats", type=int, default=10, help="timed calls per budget")
    add_run_flags(c)
    c.set_defaults(func=_convert)
    acm.set_defaults(func=lambda _a: acm.print_help() or 2)


def _convert(args: argparse.Namespace) -> int:
    import yaml

    from frugalnn.cli.evaluate import parse_floats
    from frugalnn.data import get_dataset
    from frugalnn.evaluation import evaluate_into
    from frugalnn.methods.acm.convert import DEFAULT_QS, convert_to_acm
    from frugalnn.methods.acm.report import write_extras
    from frugalnn.methods.acm.training import ACMTrainConfig, train_acm
    from frugalnn.report import write_run_report
    from frugalnn.train.checkpoint import save_checkpoint

    check_positive(((args.train_limit, "--train-limit"), (args.eval_limit, "--eval-limit"),
                    (args.batch_size, "--batch-size"), (args.threads, "--threads"),
                    (args.latency_repeats, "--latency-repeats"), (args.learners, "--learners")))
    cfg = ACMTrainConfig(
        distill_epochs=args.distill_epochs, gate_epochs=args.gate_epochs,
        finetune_epochs=args.finetune_epochs, distill_lr=args.distill_lr, gate_lr=args.gate_lr,
        finetune_lr=args.finetune_lr, ratio=args.ratio, target=args.target,
        budget_weight=args.budget_weight, kd_weight=args.kd_weight,
        kd_temperature=args.kd_temperature,
    )
    cfg.check()
    qs = parse_floats(args.budgets) or list(DEFAULT_QS)
    out = start_run(args)
    model_args = parse_model_args(args.model_arg, value=yaml.safe_load)
    model = load_base_model(args.model, args.checkpoint, model_args, args.device).eval()
    train = get_dataset(args.data, args.train_split, args.data_dir, limit=args.train_limit)
    test = get_dataset(args.data, args.eval_split, args.data_dir, limit=args.eval_limit)
    loader = shuffled_loader(train, args.batch_size, args.seed)
    teacher = copy.deepcopy(model)
    acm = convert_to_acm(model, num_learners=args.learners, gate_hidden=args.gate_hidden,
                         sites=args.sites, qs=qs, seed=args.seed)
    print(f"training {len(acm.acm_layers())} ACM layers ({args.learners} learners each): "
          f"distil {cfg.distill_epochs}, gate {cfg.gate_epochs}, fine-tune {cfg.finetune_epochs} "
          "epochs")
    train_acm(acm, teacher, loader, cfg, seed=args.seed, device=args.device,
              progress=not args.no_progress)
    config = args_config(args, "acm convert")
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "checkpoint", acm, {"config": config})
    records = evaluate_into(
        acm, test, out, method="acm", batch_size=args.batch_size, threads=args.threads,
        device=args.device, latency_batch_sizes=(1, args.batch_size),
        latency_repeats=args.latency_repeats, config=config, force=args.force,
        progress=not args.no_progress,
    )
    write_extras(acm, out, test, device=args.device, images=args.map_images)
    write_run_report(out)
    print_budget_summary(records, "q", width=5)
    print(f"checkpoint: {out / 'checkpoint'}")
    print(f"report:     {out / 'report'}  (compute maps in {out / 'extras'})")
    return 0
