"""Run directories never destroy what frugalnn did not write, and have one writer.

Each test is one defect of the safety issue: ``--force`` on folders that are not
runs, a replaced run deleted before the new one started, two writers on one
directory, failed starts that block the retry, ``--out`` on a file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from frugalnn.cli import main
from frugalnn.cli.common import check_out
from frugalnn.errors import UserError
from frugalnn.utils import rundir
from frugalnn.utils.rundir import MARKER, finish_run, is_run_dir, open_run

TRAIN = ["train", "--model", "mlp", "--data", "digits", "--epochs", "1", "--train-limit", "64",
         "--eval-limit", "32", "--no-progress"]


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_force_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    docs = tmp_path / "mydocs"
    docs.mkdir()
    (docs / "thesis.tex").write_text("years of work")
    assert main([*TRAIN, "--out", str(docs), "--force"]) == 2
    assert "not a frugalnn run directory" in _err(capsys)
    assert (docs / "thesis.tex").read_text() == "years of work"
    # The shared start of every method command refuses it the same way.
    with pytest.raises(UserError, match="not a frugalnn run directory"):
        check_out(docs, force=True)
    assert (docs / "thesis.tex").is_file() and not list(tmp_path.glob(".mydocs*"))


def test_force_refuses_a_folder_with_a_foreign_config_json(tmp_path, capsys):
    model_dir = tmp_path / "hf-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"architectures": ["BertModel"]}')
    (model_dir / "pytorch_model.bin").write_bytes(b"weights")
    assert main([*TRAIN, "--out", str(model_dir), "--force"]) == 2
    assert "not a frugalnn run directory" in _err(capsys)
    assert (model_dir / "pytorch_model.bin").read_bytes() == b"weights"


def test_force_on_the_current_directory_keeps_the_sources(tmp_path, capsys, monkeypatch):
    (tmp_path / "main.py").write_text("print('mine')")
    monkeypatch.chdir(tmp_path)
    assert main([*TRAIN, "--out", ".", "--force"]) == 2
    assert (tmp_path / "main.py").is_file()


def test_nas_search_force_refuses_before_touching_the_folder(tmp_path):
    from frugalnn.methods.nas.recipe import _start

    docs = tmp_path / "mydocs"
    docs.mkdir()
    (docs / "thesis.tex").write_text("keep")
    with pytest.raises(UserError, match="not a frugalnn run directory"):
        _start(docs, force=True)
    assert (docs / "thesis.tex").read_text() == "keep"


def test_a_run_is_marked_and_force_replaces_it_only_after_the_new_one_has_results(
        tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    assert is_run_dir(out) and (out / "checkpoint" / "model.safetensors").is_file()
    # A replacement that cannot start (unknown model) leaves the old run as it was.
    before = sorted(p.name for p in out.iterdir())
    assert main([*TRAIN[:2], "no_such_model", *TRAIN[3:], "--out", str(out), "--force"]) == 2
    assert sorted(p.name for p in out.iterdir()) == before
    assert not list(tmp_path.glob(".run*"))  # no aside copy, no lock file left
    # A replacement that starts replaces it.
    assert main([*TRAIN, "--out", str(out), "--force", "--seed", "3"]) == 0
    assert '"seed": 3' in (out / "config.json").read_text()
    assert not list(tmp_path.glob(".run*"))


def test_a_failed_start_leaves_nothing_and_the_retry_works(tmp_path, capsys):
    out = tmp_path / "new"
    assert main([*TRAIN[:2], "no_such_model", *TRAIN[3:], "--out", str(out)]) == 2
    assert not out.exists() and not list(tmp_path.iterdir())
    # A generic command that wrote nothing is undone as well.
    open_run(out)
    out.mkdir()
    (out / "config.json").write_text("{}")
    finish_run(out)
    assert not out.exists()
    assert main([*TRAIN, "--out", str(out)]) == 0


def test_out_on_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    assert main([*TRAIN, "--out", str(f)]) == 2
    assert "is a file" in _err(capsys) or "already exists" in _err(capsys)
    with pytest.raises(UserError, match="is a file"):
        check_out(f, force=True)
    with pytest.raises(UserError, match="cannot create"):
        check_out(f / "run", force=False)  # a path below a file
    assert f.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_out_in_a_read_only_directory_is_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(UserError, match="permission denied|read-only"):
            check_out(ro / "run", force=False)
    finally:
        ro.chmod(0o700)


HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
    print("locked", flush=True)
    time.sleep(60)
""")


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / ".run.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main([*TRAIN, "--out", str(out)]) == 2
        err = _err(capsys)
        assert f"PID {holder.pid}" in err and err.count("\n") == 1
        with pytest.raises(UserError, match=f"PID {holder.pid}"):
            check_out(out, force=True)
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its lock file stays, but the lock is the kernel's and is gone.
    assert (tmp_path / ".run.lock").exists()
    assert main([*TRAIN, "--out", str(out)]) == 0
    assert not (tmp_path / ".run.lock").exists()


def test_a_run_left_by_a_killed_writer_is_marked_and_an_aside_copy_restored(tmp_path):
    out = tmp_path / "run"
    # Killed while writing results: lock file with its PID, unmarked results.
    out.mkdir()
    (out / "records.csv").write_text("id\n")
    (tmp_path / ".run.lock").write_text("999999\n")
    open_run(out, force=True)  # recovers, then sets the (now marked) run aside
    finish_run(out)
    assert is_run_dir(out) and (out / "records.csv").is_file()
    # Killed after setting the old run aside, before writing anything: the old one returns.
    aside = tmp_path / f".run.replaced-{os.getpid() + 1}"
    os.replace(out, aside)
    open_run(out, resume=True)
    finish_run(out)
    assert (out / "records.csv").is_file() and not aside.exists()


def test_same_process_may_reopen_its_run(tmp_path):
    out = tmp_path / "run"
    open_run(out)
    out.mkdir()
    (out / "records.csv").write_text("id\n")
    open_run(out, force=True)  # settles the first hold (marks it), then replaces it
    assert rundir.active_runs()
    finish_run(out)  # the second wrote nothing: the first run comes back
    assert (out / "records.csv").is_file() and is_run_dir(out)


@pytest.mark.slow
def test_two_concurrent_train_processes(tmp_path):
    """Two real `frugalnn train` processes on one --out: one runs, the other exits 2."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "frugalnn.cli", *TRAIN, "--epochs", "3", "--out", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / ".run.lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()
    assert second.returncode == 2 and f"PID {first.pid}" in second.stderr
    assert main(["train", "--out", str(out), "--resume", "--epochs", "4", "--no-progress"]) == 0


def test_marker_constant_is_hidden():
    assert MARKER.startswith(".")


def test_out_on_a_read_only_file_system_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    def read_only(*_a, **_k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(rundir.os, "open", read_only)
    assert main([*TRAIN, "--out", str(tmp_path / "run")]) == 2
    err = _err(capsys)
    assert "read-only" in err and err.count("\n") == 1


def test_a_failed_resume_removes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"options": {}}')  # killed before its first checkpoint
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 2
    assert (out / "config.json").read_text() == '{"options": {}}'


def test_a_recipe_checks_its_out_before_training_and_creates_nothing(tmp_path):
    """``check_run_dir`` (the recipes' check before they train) refuses a folder holding
    files unless forced, accepts a missing or empty one, and writes nothing either way."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists; pass --force"):
        rundir.check_run_dir(theirs, force=False)
    assert rundir.check_run_dir(theirs, force=True) == theirs
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert rundir.check_run_dir(empty, force=False) == empty and not any(empty.iterdir())
    missing = tmp_path / "new" / "run"
    assert rundir.check_run_dir(missing, force=False) == missing and not missing.parent.exists()
