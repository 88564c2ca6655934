"""Early-exit training (heads only, joint, ZTW ensemble), the CLI and the demo hook."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from frugalnn.cli import main
from frugalnn.errors import UserError
from frugalnn.methods.early_exit import attach_heads
from frugalnn.methods.early_exit.offline import collect_trace, trace_from_features
from frugalnn.methods.early_exit.training import (
    FeatureCache,
    cache_augmented_passes,
    cache_features,
    exit_loss_weights,
    train_ensemble,
    train_final_ensemble,
    train_heads,
    train_joint,
    train_ztw_crossfit,
)
from frugalnn.models import create_model


def _task(n: int = 256):
    """A separable 4-class problem on 1x8x8 images (class = bright quadrant)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    for c in range(4):
        r, s = divmod(c, 2)
        x[y == c, :, 4 * r : 4 * r + 4, 4 * s : 4 * s + 4] += 1.0
    return x, y


def _cnn():
    return create_model("cnn_small", in_channels=1, image_size=8, num_classes=4,
                        widths=(8, 16, 16)).eval()


def test_heads_only_training_learns_and_leaves_backbone_untouched():
    x, y = _task()
    ee = attach_heads(_cnn(), "every", cascade=True)
    ee.freeze_backbone = True
    before = {k: v.clone() for k, v in ee.backbone.state_dict().items()}
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    cache = cache_features(ee, loader)
    assert [f.shape[0] for f in cache.feats] == [256, 256]
    hist = train_heads(ee, cache, epochs=15, lr=1e-2, batch_size=64)
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert min(hist[-1]["head_accuracy"]) > 0.9
    for k, v in ee.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN statistics unchanged
    # The trace built from cached features equals a fresh all-exits pass.
    t1 = collect_trace(ee, loader)
    t2 = trace_from_features(ee, cache, x[:1])
    torch.testing.assert_close(t1.logits, t2.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(t1.exit_flops, t2.exit_flops)


def test_ensemble_starts_as_identity_and_training_lowers_its_loss():
    x, y = _task()
    ee = attach_heads(_cnn(), "every", cascade=True)
    cache = cache_features(ee, DataLoader(TensorDataset(x, y), batch_size=64))
    train_heads(ee, cache, epochs=3, lr=1e-2)
    with torch.no_grad():
        heads = ee.heads_from_features(cache.feats)
    ens = ee.add_ensemble()
    with torch.no_grad():
        combined = ee.combine(heads)
    for h, c in zip(heads, combined):  # w = I, b = 0: each exit is its own head
        torch.testing.assert_close(torch.log_softmax(h, 1), c)
    hist = train_ensemble(ee, cache, epochs=20, lr=5e-2)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert torch.all(torch.triu(ens.weight, diagonal=1) == 0)
    assert ee.frugalnn_transforms[-1]["args"]["ensemble"] is True


def test_final_ensemble_starts_as_backbone_and_fitting_beats_a_weak_backbone():
    """The fit leans on the heads when the backbone's own classifier is poor."""
    x, y = _task(512)
    backbone = _cnn()
    ee = attach_heads(backbone, "every", cascade=True)
    ee.freeze_backbone = True
    cache = cache_features(ee, DataLoader(TensorDataset(x, y), batch_size=128))
    train_heads(ee, cache, epochs=15, lr=1e-2, batch_size=64)
    fit_part, held = cache.split(0.5, seed=1)
    fin = ee.add_final_ensemble()
    with torch.no_grad():
        start = trace_from_features(ee, held, x[:1])
    # Identity start: the last exit is the backbone's own log-probabilities.
    torch.testing.assert_close(start.logits[-1], torch.log_softmax(held.final_logits, 1))
    assert torch.equal(start.plain_logits, held.final_logits)
    hist = train_final_ensemble(ee, fit_part, epochs=100, lr=5e-2)
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    after = trace_from_features(ee, held, x[:1])
    acc = [float((t.logits[-1].argmax(1) == held.labels).double().mean()) for t in (start, after)]
    assert acc[1] > acc[0] + 0.2  # untrained backbone classifier: the heads carry the answer
    assert float(fin.weight.detach()[:-1].abs().sum()) > 0.1
    assert ee.frugalnn_transforms[-1]["args"]["final_ensemble"] is True
    with pytest.raises(UserError, match="final ensemble"):
        train_joint(ee, DataLoader(TensorDataset(x, y), batch_size=64), epochs=1,
                    progress=False)


def test_augmented_passes_concatenate_and_split_by_the_same_images():
    x, y = _task(64)
    ee = attach_heads(_cnn(), "every")
    plain = cache_features(ee, DataLoader(TensorDataset(x, y), batch_size=32))

    def flipped(k):  # a deterministic "augmentation" per pass
        return TensorDataset(torch.flip(x, dims=[3]) if k == 0 else x + 0.1 * k, y)

    passes = cache_augmented_passes(ee, flipped, 2, batch_size=16)
    assert len(passes) == 2 and all(len(c) == 64 for c in passes)
    assert not torch.equal(passes[0].feats[0], plain.feats[0])
    assert cache_augmented_passes(ee, flipped, 0) == []
    both = FeatureCache.concat([plain, *passes])
    assert len(both) == 192 and torch.equal(both.labels, y.repeat(3))
    assert torch.equal(both.feats[1][64:128], passes[0].feats[1])
    # One split seed holds out the same images (labels and positions) in every pass.
    (_, held_plain), (_, held_aug) = plain.split(0.25, seed=3), passes[1].split(0.25, seed=3)
    assert torch.equal(held_plain.labels, held_aug.labels) and len(held_plain) == 16
    with pytest.raises(UserError, match="at least one"):
        FeatureCache.concat([])
    other = attach_heads(_cnn(), "every:2")
    with pytest.raises(UserError, match="different heads"):
        FeatureCache.concat([plain, cache_features(other, DataLoader(TensorDataset(x, y)))])
    with pytest.raises(UserError, match=">= 0"):
        cache_augmented_passes(ee, flipped, -1)


def test_joint_training_with_sdn_weights_updates_backbone():
    x, y = _task(128)
    ee = attach_heads(_cnn(), "every")
    w = exit_loss_weights(ee, x[:1])
    assert len(w) == 3 and w[-1] == 1.0 and 0 < w[0] < w[1] < 1
    before = ee.backbone.blocks[0].conv.weight.clone() if hasattr(
        ee.backbone.blocks[0], "conv") else next(ee.backbone.parameters()).clone()
    res = train_joint(ee, DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True),
                      epochs=2, lr=0.05, progress=False)
    after = ee.backbone.blocks[0].conv.weight if hasattr(
        ee.backbone.blocks[0], "conv") else next(ee.backbone.parameters())
    assert not torch.equal(before, after)
    assert len(res.history) == 2


def test_final_exit_weight_scales_only_the_final_exits_gradient():
    from frugalnn.methods.early_exit.training import multi_exit_loss

    x, y = _task(32)
    ee = attach_heads(_cnn(), "every")
    w1 = exit_loss_weights(ee, x[:1])
    w3 = exit_loss_weights(ee, x[:1], final_weight=3.0)
    assert w3[:-1] == w1[:-1] and w3[-1] == 3.0
    head_param = next(ee.heads.parameters())
    last = list(ee.backbone.parameters())[-1]  # the classifier's bias: only the final exit
    grads = {}
    for name, w in (("w1", w1), ("w3", w3)):
        ee.zero_grad(set_to_none=True)
        loss, _ = multi_exit_loss(w)(ee, (x, y))
        loss.backward()
        grads[name] = (last.grad.clone(), head_param.grad.clone())
    torch.testing.assert_close(grads["w3"][0], 3.0 * grads["w1"][0])
    torch.testing.assert_close(grads["w3"][1], grads["w1"][1])
    with pytest.raises(UserError, match="final exit loss weight"):
        exit_loss_weights(ee, x[:1], final_weight=0.0)


def test_crossfit_keeps_groups_in_one_fold_and_trains_final_heads_on_every_row(monkeypatch):
    """Stacking: fold models see the other folds only; the kept heads see every row."""
    import frugalnn.methods.early_exit.training as training

    x, y = _task(128)
    ee = attach_heads(_cnn(), "every", cascade=True)
    ee.freeze_backbone = True
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    plain = cache_features(ee, loader)
    noisy = cache_features(ee, DataLoader(TensorDataset(x + 0.2, y), batch_size=64))
    cache = FeatureCache.concat([plain, noisy])
    groups = torch.arange(256) % 128  # row r and r + 128 are the same image
    reference = attach_heads(_cnn(), "every", cascade=True)
    reference.heads.load_state_dict(ee.heads.state_dict())
    train_heads(reference, cache, epochs=3, lr=1e-2, seed=5)

    seen_rows = []
    real_train_heads = training.train_heads

    def spy(model, data, **kw):
        seen_rows.append(kw.get("rows"))
        return real_train_heads(model, data, **kw)

    monkeypatch.setattr(training, "train_heads", spy)
    out = train_ztw_crossfit(ee, cache, folds=4, groups=groups, epochs=3, lr=1e-2,
                             ensemble_epochs=20, ensemble_lr=5e-2, seed=5)
    assert len(out["folds"]) == 4 and len(out["heads"]) == 3 and len(out["ensemble"]) == 20
    assert len(seen_rows) == 5 and seen_rows[-1] is None  # the kept heads: every row
    held_sets = []
    for rows in seen_rows[:4]:
        held = sorted(set(range(256)) - set(rows.tolist()))
        held_groups = set(groups[held].tolist())
        # No image of a held-out fold is among the rows its fold model trained on.
        assert not held_groups & set(groups[rows].tolist())
        assert 20 <= len(held_groups) <= 44
        held_sets.append(set(held))
    assert set().union(*held_sets) == set(range(256)) and sum(map(len, held_sets)) == 256
    for (k, v), w in zip(ee.heads.state_dict().items(), reference.heads.state_dict().values()):
        assert torch.equal(v, w), k  # restarted from the initial weights, same seed
    ens = ee.ensemble.weight.detach()
    assert torch.all(torch.triu(ens, diagonal=1) == 0) and not torch.equal(ens, torch.eye(2))
    with pytest.raises(UserError, match="2 <= folds <= 128"):
        train_ztw_crossfit(ee, cache, folds=1, groups=groups)
    with pytest.raises(UserError, match="2 <= folds <= 128"):
        train_ztw_crossfit(ee, cache, folds=129, groups=groups)
    with pytest.raises(UserError, match="groups has 128 entries"):
        train_ztw_crossfit(ee, cache, folds=2, groups=groups[:128])


@pytest.fixture(scope="module")
def trained_base(tmp_path_factory):
    """A briefly trained cnn_small run directory, shared by the CLI tests (read only)."""
    base = tmp_path_factory.mktemp("ee_cli") / "base"
    assert main(["train", "--model", "cnn_small", "--data", "digits", "--epochs", "1",
                 "--train-limit", "300", "--eval-limit", "100", "--out", str(base),
                 "--no-progress", "--threads", "1"]) == 0
    return base


def test_cli_train_writes_an_evaluable_run(tmp_path, capsys, trained_base):
    base = trained_base
    run = tmp_path / "ztw"
    args = ["early-exit", "train", "--model", "cnn_small", "--data", "digits",
            "--checkpoint", str(base), "--cascade", "--ensemble", "--epochs", "2",
            "--ensemble-epochs", "2", "--train-limit", "300", "--eval-limit", "100",
            "--budgets", "0.5", "0.9", "1.0", "--offline-sweep", "--out", str(run),
            "--no-progress"]
    assert main(args) == 0
    for name in ("config.json", "records.csv", "summary.json", "checkpoint",
                 "extras/early_exit.md", "extras/exits.png", "report"):
        assert (run / name).exists(), name
    summary = json.loads((run / "summary.json").read_text())
    assert sorted(b["budget"] for b in summary["budgets"]) == [0.5, 0.9, 1.0]
    assert main(args) == 2  # refuses to overwrite without --force
    assert "already exists" in capsys.readouterr().err
    ev = tmp_path / "eval"
    assert main(["evaluate", str(run), "--data", "digits", "--limit", "100", "--budgets",
                 "0.5", "0.9", "1.0", "--out", str(ev), "--no-progress",
                 "--latency-batch-sizes", "1", "--latency-repeats", "1"]) == 0
    real = (ev / "records.csv").read_text().splitlines()
    assert len(real) == 1 + 3 * 100
    # The real path (evaluate) and the offline sweep agree on the same examples.
    from frugalnn.evaluation import load_records

    a, b = load_records(ev), load_records(run)
    assert (a.columns["label"] != 0).any()
    assert a.meta["baseline_flops"] == pytest.approx(b.meta["baseline_flops"])


def test_cli_crossfit_ensemble_run(tmp_path, trained_base):
    from frugalnn.train.checkpoint import load_model

    run = tmp_path / "ztw_cf"
    assert main(["early-exit", "train", "--model", "cnn_small", "--data", "digits",
                 "--checkpoint", str(trained_base), "--cascade", "--ensemble",
                 "--ensemble-folds", "3", "--augment-passes", "1", "--epochs", "2",
                 "--ensemble-epochs", "3", "--train-limit", "300", "--eval-limit", "100",
                 "--budgets", "0.5", "1.0", "--offline-sweep", "--out", str(run),
                 "--no-progress"]) == 0
    ckpt = json.loads((run / "config.json").read_text())
    assert ckpt["ensemble_folds"] == 3
    loaded = load_model(run / "checkpoint")
    w = loaded.ensemble.weight.detach()
    assert not torch.equal(w, torch.eye(w.shape[0]))  # fitted on the out-of-fold rows


def test_cli_final_ensemble_is_fitted_on_part_of_the_validation_split(tmp_path, trained_base):
    from frugalnn.evaluation import VALIDATION_DIR, load_records
    from frugalnn.train.checkpoint import load_model

    base = trained_base
    run = tmp_path / "sdn_final"
    assert main(["early-exit", "train", "--model", "cnn_small", "--data", "digits",
                 "--checkpoint", str(base), "--epochs", "2", "--final-ensemble",
                 "--augment-passes", "1", "--val-limit", "100",
                 "--final-ensemble-holdout", "0.4", "--train-limit", "300", "--eval-limit",
                 "100", "--budgets", "0.5", "1.0", "--offline-sweep", "--out", str(run),
                 "--no-progress"]) == 0
    records = load_records(run)
    assert len(records.columns["budget"]) == 2 * 100  # every test example is scored
    val = load_records(run / VALIDATION_DIR)
    assert len(val.columns["budget"]) == 2 * 60  # 40 of the 100 went to the fit
    assert "final ensemble" in records.meta["method"]
    extras = json.loads((run / "extras" / "early_exit.json").read_text())
    assert extras["chosen_on"] == "validation" and extras["val_examples"] == 60
    loaded = load_model(run / "checkpoint")
    assert loaded.final_ensemble is not None
    assert not torch.equal(loaded.final_ensemble.weight.detach(),
                           torch.eye(loaded.num_exits)[-1])  # fitted, not the identity start
    no_val = tmp_path / "no_val"
    assert main(["early-exit", "train", "--model", "cnn_small", "--data", "digits",
                 "--checkpoint", str(base), "--final-ensemble", "--val-fraction", "0",
                 "--out", str(no_val), "--no-progress"]) == 2


@pytest.mark.parametrize("argv,message", [
    (["--final-ensemble-holdout", "1.5", "--checkpoint", "x"], "must lie in (0, 1)"),
    (["--augment-passes", "1", "--mode", "joint"], "--augment-passes applies"),
    (["--augment-passes", "-1"], "must be >= 0"),
    (["--positions", "7"], "out of range"),
    (["--mode", "heads"], "needs a trained one"),
    (["--augment"], "--augment applies"),
    (["--kd-weight", "0.5", "--checkpoint", "x"], "--kd-weight applies"),
    (["--mode", "joint", "--kd-weight", "2"], "must lie in [0, 1]"),
    (["--final-weight", "3", "--checkpoint", "x"], "--final-weight applies"),
    (["--ensemble-folds", "3", "--checkpoint", "x"], "cross-fitting needs --ensemble"),
    (["--ensemble", "--ensemble-folds", "1", "--checkpoint", "x"], "at least 2 folds"),
    (["--mode", "joint", "--final-weight", "0"], "--final-weight must be positive"),
])
def test_cli_bad_input(tmp_path, capsys, argv, message):
    base = ["early-exit", "train", "--model", "cnn_small", "--data", "digits",
            "--out", str(tmp_path / "r"), "--no-progress", "--epochs", "1"]
    if "--positions" in argv:
        base += ["--mode", "joint"]
    assert main(base + argv) == 2
    assert message in capsys.readouterr().err


def test_demo_hook_quick(tmp_path):
    from frugalnn.demo import run_demo

    report = run_demo(tmp_path / "demo", quick=True, hooks=["frugalnn.methods.early_exit.demo"],
                      progress=False, strict=True)
    for run in ("early-exit-sdn", "early-exit-ztw"):
        assert (tmp_path / "demo" / run / "records.csv").exists()
        assert (tmp_path / "demo" / run / "extras" / "early_exit.md").exists()
    assert report.exists()


def test_user_errors_from_training_helpers():
    ee = attach_heads(_cnn(), "every")
    with pytest.raises(UserError):
        train_heads(ee, DataLoader(TensorDataset(*_task(8)), batch_size=4), epochs=0)


def test_feature_cache_split_is_a_seeded_partition():
    x, y = _task(40)
    ee = attach_heads(_cnn(), "every")
    cache = cache_features(ee, DataLoader(TensorDataset(x, y), batch_size=16))
    rest, held = cache.split(0.25, seed=3)
    assert len(rest) == 30 and len(held) == 10
    rows = {tuple(r.tolist()) for r in torch.cat([rest.feats[0], held.feats[0]])}
    assert rows == {tuple(r.tolist()) for r in cache.feats[0]}
    again, _ = cache.split(0.25, seed=3)
    assert torch.equal(again.labels, rest.labels)
    with pytest.raises(UserError):
        cache.split(1.0)


def test_distilled_joint_loss_ignores_labels_at_full_weight_and_validates():
    from frugalnn.methods.early_exit.training import multi_exit_loss

    x, y = _task(16)
    ee = attach_heads(_cnn(), "every")
    teacher = _cnn()
    w = exit_loss_weights(ee, x[:1])
    pure_kd = multi_exit_loss(w, teacher=teacher, kd_weight=1.0, kd_temperature=2.0)
    a, _ = pure_kd(ee, (x, y))
    b, _ = pure_kd(ee, (x, (y + 1) % 4))
    torch.testing.assert_close(a, b)  # weight 1: only the teacher's outputs matter
    ce_only = multi_exit_loss(w)
    c, _ = ce_only(ee, (x, y))
    d, _ = ce_only(ee, (x, (y + 1) % 4))
    assert not torch.allclose(c, d)
    # A student that equals its teacher has zero KD loss at every exit that copies it.
    same, _ = multi_exit_loss([0.0, 0.0, 1.0], teacher=ee.backbone, kd_weight=1.0)(ee, (x, y))
    assert float(same) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(UserError, match="teacher"):
        multi_exit_loss(w, kd_weight=0.5)
    with pytest.raises(UserError, match="kd_weight"):
        multi_exit_loss(w, teacher=teacher, kd_weight=1.5)
    with pytest.raises(UserError, match="temperature"):
        multi_exit_loss(w, teacher=teacher, kd_weight=0.5, kd_temperature=0.0)


def test_distilled_joint_training_keeps_the_final_exit_closer_to_the_backbone():
    x, y = _task(128)
    base = _cnn()
    torch.manual_seed(0)
    dl = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    import copy

    outs = {}
    for kd in (0.0, 1.0):
        ee = attach_heads(copy.deepcopy(base), "every")
        train_joint(ee, dl, epochs=2, lr=0.05, progress=False, kd_weight=kd, seed=0)
        with torch.no_grad():
            outs[kd] = ee.backbone.eval()(x)
    with torch.no_grad():
        ref = base(x)
    drift = {kd: float((o - ref).pow(2).mean()) for kd, o in outs.items()}
    assert drift[1.0] < drift[0.0]


def test_cli_joint_training_with_distillation(tmp_path, trained_base):
    base = trained_base
    run = tmp_path / "joint"
    assert main(["early-exit", "train", "--model", "cnn_small", "--data", "digits",
                 "--checkpoint", str(base), "--mode", "joint", "--kd-weight", "0.7",
                 "--final-weight", "2",
                 "--epochs", "1", "--train-limit", "200", "--eval-limit", "50",
                 "--budgets", "0.9", "1.0", "--offline-sweep", "--out", str(run),
                 "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["kd_weight"] == 0.7 and config["final_weight"] == 2.0
    assert (run / "summary.json").exists()
