"""A fuzz of command-line arguments: every outcome is success or one line with exit 2.

``hypothesis`` draws values (bad numbers, unknown names and devices, odd
paths) for the flags of ``frugalnn train`` and ``frugalnn evaluate``; a
traceback (any exception escaping ``main``) fails the test.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frugalnn.cli import main

FUZZ = settings(max_examples=25, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
_COUNTER = itertools.count()

_INT = st.sampled_from(["0", "-1", "1", "2", "x", "1e9", ""])
_FRACTION = st.sampled_from(["0", "0.1", "0.99", "1", "-0.5", "nan", "x"])
_DEVICE = st.sampled_from(["cpu", "cpu:0", "gpu", "cuda", "cuda:7", "mps", "meta", "", "tpu:0"])
_MODEL = st.sampled_from(["mlp", "cnn_small", "lm_tiny", "nope", ""])
_DATA = st.sampled_from(["digits", "nope", "mnist", "tinyshakespeare", ""])


def _outcome(argv: list[str], capsys) -> None:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse: a malformed flag value, exit 2 with usage
        rc = exc.code
    err = capsys.readouterr().err
    assert rc in (0, 2), err
    if rc == 2 and "usage:" not in err:
        assert len([line for line in err.splitlines() if line.startswith("frugalnn:")]) == 1
        assert "Traceback" not in err


@FUZZ
@given(model=_MODEL, data=_DATA, epochs=_INT, batch=_INT, limit=_INT, val=_FRACTION,
       device=_DEVICE, force=st.booleans())
def test_train_arguments(tmp_path, capsys, model, data, epochs, batch, limit, val, device,
                         force):
    out = tmp_path / f"run{next(_COUNTER)}"
    argv = ["train", "--model", model, "--data", data, "--epochs", epochs, "--batch-size",
            batch, "--train-limit", limit, "--eval-limit", "16", "--val-fraction", val,
            "--device", device, "--out", str(out), "--no-progress", "--data-dir", str(tmp_path)]
    if epochs not in ("0", "1", "-1", "x", ""):
        argv[argv.index("--epochs") + 1] = "1"  # keep the runs that start short
    if force:
        argv.append("--force")
    _outcome(argv, capsys)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    assert main(["train", "--model", "mlp", "--data", "digits", "--epochs", "1",
                 "--train-limit", "64", "--eval-limit", "16", "--no-progress",
                 "--out", str(out)]) == 0
    return out


@FUZZ
@given(data=_DATA, limit=_INT, val=_FRACTION, device=_DEVICE, batch=_INT,
       source=st.sampled_from(["run", "checkpoint", "missing", "file"]))
def test_evaluate_arguments(trained, tmp_path, capsys, data, limit, val, device, batch, source):
    (tmp_path / "file.txt").write_text("x")
    checkpoint = {"run": trained, "checkpoint": trained / "checkpoint",
                  "missing": tmp_path / "missing", "file": tmp_path / "file.txt"}[source]
    argv = ["evaluate", str(checkpoint), "--data", data, "--limit", limit, "--val-fraction",
            val, "--device", device, "--batch-size", batch, "--no-progress",
            "--out", str(tmp_path / f"ev{next(_COUNTER)}"), "--budgets", "1"]
    _outcome(argv, capsys)
