"""The training loop: determinism, frozen parts, schedules, LM, hooks, distillation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from frugalnn.errors import UserError
from frugalnn.models.registry import create_model
from frugalnn.train import DistillConfig, fit
from frugalnn.train.distill import kd_loss, output_matching_loss
from frugalnn.train.loop import cross_entropy
from frugalnn.train.schedule import build_optimizer, lr_multiplier


def _digits(n=300, batch=50, shuffle=True):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:n], dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(d.target[:n])
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=shuffle)


def _mlp(seed=0, **kw):
    torch.manual_seed(seed)
    return create_model("mlp", input_shape=(1, 8, 8), hidden=24, depth=2, **kw)


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_same_seed_same_result_and_learning_happens():
    runs = []
    for _ in range(2):
        model = _mlp(dropout=0.2)
        res = fit(model, _digits(), epochs=3, lr=0.5, seed=5, progress=False)
        runs.append((model, res))
    assert _same_weights(runs[0][0], runs[1][0])
    hist = runs[0][1].history
    assert [r["epoch"] for r in hist] == [1, 2, 3] and hist[-1]["step"] == 18
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["train_acc"] > 0.25  # chance is 0.1
    other = _mlp(dropout=0.2)
    fit(other, _digits(), epochs=3, lr=0.5, seed=6, progress=False)
    assert not _same_weights(runs[0][0], other)


def test_eval_metrics_and_best():
    model = _mlp()
    res = fit(
        model, _digits(), epochs=2, lr=0.1, eval_loader=_digits(100, 64, False), progress=False
    )
    assert all("eval_acc" in r and "eval_loss" in r for r in res.history)
    assert res.best_metrics["eval_acc"] == max(r["eval_acc"] for r in res.history)
    assert res.checkpoint_dir is None


@pytest.mark.parametrize("how", ["predicate", "names"])
def test_trainable_freezes_everything_else(how):
    model = _mlp()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    head = {n for n, _ in model.named_parameters() if n.startswith("head.")}
    sel = (lambda n: n.startswith("head.")) if how == "predicate" else sorted(head)
    fit(model, _digits(), epochs=1, lr=0.1, weight_decay=1e-3, trainable=sel, progress=False)
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p)
        assert changed == (n in head), n
        assert p.requires_grad == (n in head)


def test_trainable_errors():
    with pytest.raises(UserError, match="not in the model"):
        fit(_mlp(), _digits(), epochs=1, trainable=["nope.weight"], progress=False)
    with pytest.raises(UserError, match="no trainable parameters"):
        fit(_mlp(), _digits(), epochs=1, trainable=lambda n: False, progress=False)


def test_grad_clip_bounds_the_update():
    model = _mlp()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    loader = _digits(50, 50)
    fit(model, loader, epochs=1, lr=1.0, momentum=0.0, schedule="none", grad_clip=0.01,
        progress=False)  # fmt: skip
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # One SGD step of lr 1 with the gradient norm clipped to 0.01.
    assert (after - before).norm().item() == pytest.approx(0.01, rel=1e-3)


def test_schedules():
    cos = lr_multiplier("cosine", 10, warmup=2)
    assert [cos(0), cos(1)] == [0.5, 1.0]
    assert cos(2) == 1.0 and cos(10) == pytest.approx(0.0) and 0 < cos(6) < 1
    step = lr_multiplier("step", 9, step_size=3, gamma=0.5)
    assert [step(t) for t in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_multiplier("none", 5)(4) == 1.0
    with pytest.raises(UserError, match="unknown schedule"):
        lr_multiplier("linear", 5)
    with pytest.raises(UserError, match="unknown optimizer"):
        build_optimizer([nn.Parameter(torch.zeros(1))], "lion", lr=0.1)


def test_epoch_schedule_sets_lr_per_epoch():
    res = fit(_mlp(), _digits(), epochs=3, lr=0.3, schedule="step", schedule_unit="epoch",
              step_size=1, gamma=0.1, progress=False)  # fmt: skip
    assert [r["lr"] for r in res.history] == pytest.approx([0.3, 0.03, 0.003])


def test_adamw_and_label_smoothing_run():
    res = fit(_mlp(), _digits(), epochs=1, optimizer="adamw", lr=1e-2, label_smoothing=0.1,
              weight_decay=0.05, progress=False)  # fmt: skip
    assert math.isfinite(res.history[0]["train_loss"])
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    assert torch.equal(
        cross_entropy(logits, y, 0.1), F.cross_entropy(logits, y, label_smoothing=0.1)
    )


def test_language_model_training():
    torch.manual_seed(0)
    model = create_model("lm_tiny", vocab_size=12, context=16, dim=32, depth=1, heads=2)
    pattern = torch.arange(17) % 12  # a predictable sequence
    seqs = torch.stack([pattern.roll(-i) for i in range(24)])
    loader = DataLoader(TensorDataset(seqs[:, :-1], seqs[:, 1:]), batch_size=8, shuffle=True)
    res = fit(model, loader, epochs=6, optimizer="adamw", lr=3e-3, progress=False)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert 0.0 <= res.history[-1]["train_acc"] <= 1.0


def test_loss_fn_hook_replaces_cross_entropy():
    calls = []

    def mse_to_zero(model, batch):
        calls.append(len(batch[0]))
        out = model(batch[0])
        return out.pow(2).mean(), None

    model = _mlp()
    res = fit(model, _digits(100, 50), epochs=2, lr=0.1, loss_fn=mse_to_zero, progress=False)
    assert calls == [50, 50, 50, 50]
    assert "train_acc" not in res.history[0]  # no logits returned, nothing to score
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise():
    a = torch.randn(4, 10)
    assert kd_loss(a, a, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(a, torch.randn(4, 10), 2.0).item() > 0
    lm = torch.randn(2, 5, 7)
    assert kd_loss(lm, lm, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_pulls_student_towards_teacher():
    teacher = _mlp(seed=1)
    fit(teacher, _digits(), epochs=4, lr=0.5, progress=False)
    teacher.eval()
    x = torch.stack([b for b, _ in _digits(300, 300, False)])[0]

    def gap(student):
        with torch.no_grad():
            return (
                kd_loss(student(x), teacher(x), 1.0).item()
                + F.mse_loss(
                    student.blocks[0](student.embed(x)), teacher.blocks[0](teacher.embed(x))
                ).item()
            )

    student = _mlp(seed=2).eval()
    start = gap(student)
    cfg = DistillConfig(alpha=1.0, temperature=2.0, feature_pairs=[("blocks.0", "blocks.0")])
    fit(student, _digits(), epochs=5, lr=0.2, teacher=teacher, distill=cfg, progress=False)
    assert gap(student.eval()) < 0.5 * start
    # Hooks are removed afterwards.
    assert not student.blocks[0]._forward_hooks and not teacher.blocks[0]._forward_hooks


def test_output_matching_loss_is_zero_on_the_teacher_and_pulls_a_student_to_it():
    teacher = _mlp(seed=1).eval()
    loss_fn = output_matching_loss(teacher)
    x = torch.stack([b for b, _ in _digits(300, 300, False)])[0]
    with torch.no_grad():
        assert loss_fn(teacher, (x,))[0].item() == pytest.approx(0.0, abs=1e-6)
        student = _mlp(seed=2)
        # An unrelated output: the scaled MSE alone is of order one, whatever the output scale.
        start = loss_fn(student, x)[0].item()
        assert start > 0.5
    unlabelled = DataLoader(TensorDataset(x), batch_size=50, shuffle=True)
    fit(student, unlabelled, epochs=20, optimizer="adamw", lr=0.01, loss_fn=loss_fn,
        progress=False)
    with torch.no_grad():
        assert loss_fn(student.eval(), x)[0].item() < 0.25 * start
    with pytest.raises(UserError, match="cosine_weight"):
        output_matching_loss(teacher, cosine_weight=-1)


def test_distillation_errors():
    teacher = create_model("mlp", input_shape=(1, 8, 8), hidden=48, depth=2)
    cfg = DistillConfig(feature_pairs=[("blocks.0", "blocks.0")])
    with pytest.raises(UserError, match="equal output shapes"):
        fit(_mlp(), _digits(), epochs=1, teacher=teacher, distill=cfg, progress=False)
    with pytest.raises(UserError, match="no module named"):
        bad = DistillConfig(feature_pairs=[("nope", "blocks.0")])
        fit(_mlp(), _digits(), epochs=1, teacher=teacher, distill=bad, progress=False)
    with pytest.raises(UserError, match="alpha"):
        DistillConfig(alpha=2.0)
    with pytest.raises(UserError, match="needs a teacher"):
        fit(_mlp(), _digits(), epochs=1, distill=DistillConfig(), progress=False)


def test_run_dir_checkpoint_resume_and_refusal(tmp_path):
    model = _mlp()
    res = fit(model, _digits(), epochs=2, lr=0.1, run_dir=tmp_path, progress=False)
    assert res.checkpoint_dir == tmp_path / "checkpoint"
    assert (tmp_path / "train_history.json").is_file()
    # A finished run resumed does no more work and returns the same history.
    again = _mlp(seed=9)
    res2 = fit(again, _digits(), epochs=2, lr=0.1, run_dir=tmp_path, progress=False)
    assert res2.history == res.history and _same_weights(model, again)
    # Extending it trains only the new epoch.
    res3 = fit(_mlp(), _digits(), epochs=3, lr=0.1, run_dir=tmp_path, progress=False)
    assert [r["epoch"] for r in res3.history] == [1, 2, 3]
    with pytest.raises(UserError, match="already holds a checkpoint"):
        fit(_mlp(), _digits(), epochs=3, run_dir=tmp_path, resume=False, progress=False)


def test_bad_arguments():
    for kw, msg in [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 1, "label_smoothing": 1.0}, "label_smoothing"),
        ({"epochs": 1, "grad_clip": -1.0}, "grad_clip"),
        ({"epochs": 1, "lr": -0.1}, "learning rate"),
        ({"epochs": 1, "schedule_unit": "batch"}, "schedule_unit"),
        ({"epochs": 1, "checkpoint_every": 0}, "checkpoint_every"),
    ]:
        with pytest.raises(UserError, match=msg):
            fit(_mlp(), _digits(), progress=False, **kw)


def test_augmenting_dataset_draws_new_augmentations_every_epoch():
    """fit tells the dataset (through Subset wrappers) the epoch: an augmented image
    differs between epochs, and is the same for the same (seed, epoch)."""
    import numpy as np
    from torch.utils.data import Subset

    from frugalnn.data.base import ImageArrayDataset
    from frugalnn.data.catalog import dataset_info

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, 1, 8, 8), dtype=np.uint8)
    base = ImageArrayDataset(images, np.arange(8) % 2, dataset_info("digits"), mean=(0.5,),
                             std=(0.25,), augment=True, pad=2, flip=False, seed=3)
    seen: dict[int, list[torch.Tensor]] = {}

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Linear(64, 2)
            self.epoch_images: list[torch.Tensor] = []

        def forward(self, x):
            self.epoch_images.append(x.detach().clone())
            return self.w(x.flatten(1))

    for run in range(2):
        net = Recorder()
        loader = DataLoader(Subset(base, list(range(8))), batch_size=8, shuffle=False)
        fit(net, loader, epochs=2, lr=1e-3, seed=0)
        seen[run] = net.epoch_images
    assert not torch.equal(seen[0][0], seen[0][1])  # epoch 0 vs epoch 1
    assert torch.equal(seen[0][1], seen[1][1])  # same epoch, same draws
