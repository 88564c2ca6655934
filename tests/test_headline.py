"""benchmarks/headline.py: the one entry point that reruns every headline result."""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from bench_scripts import load_benchmark

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "headline.py"


@pytest.fixture(scope="module")
def headline():
    yield load_benchmark("headline")
    sys.modules.pop("headline", None)


def _dry_run(headline, capsys, *args: str) -> dict[str, list[list[str]]]:
    """``{entry name: [argv of each command]}`` printed by ``--dry-run``."""
    assert headline.main(["--dry-run", *args]) == 0
    commands: dict[str, list[list[str]]] = {}
    name = None
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("# "):
            name = line[2:].split(":", 1)[0]
            commands[name] = []
        elif line.strip():
            commands[name].append(shlex.split(line))
    return commands


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _training_seed(argv: list[str]) -> str:
    """``--seed N``, or ``--seeds N`` for a script whose ``--seed`` is the split seed."""
    return _flag(argv, "--seed") if "--seed" in argv else _flag(argv, "--seeds")


def test_dry_run_lists_every_entry_with_three_seeds(headline, capsys, tmp_path):
    commands = _dry_run(headline, capsys, "--out-dir", str(tmp_path), "--data-dir", "/data")
    assert list(commands) == [e.name for e in headline.ENTRIES]
    assert {"early-exit", "moe", "acm", "lowrank", "lowrank-speed", "nas", "nmf",
            "minilm-svd"} <= set(commands)
    for entry in headline.ENTRIES:
        runs = commands[entry.name]
        for argv in runs:
            assert argv[0] == "python" and argv[1] == f"benchmarks/{entry.script}"
            assert (BENCH.parent / entry.script).is_file()
            assert ("--data-dir" in argv) == entry.data_dir
        if entry.seeds == "each":  # one run per seed, each with its own output files
            assert [_training_seed(a) for a in runs] == ["0", "1", "2"]
            outs = [tuple(x for x in a if x.startswith(str(tmp_path))) for a in runs]
            assert len(set(outs)) == 3
        elif entry.seeds == "list":
            assert len(runs) == 1 and _flag(runs[0], "--seeds") == "0,1,2"
        else:
            assert len(runs) == 1 and _flag(runs[0], "--processes") == "3"
        # no command writes outside the output directory or into the results files
        for argv in runs:
            for x in argv:
                assert "benchmarks/results" not in x


def test_seeds_only_and_quick_arguments(headline, capsys, tmp_path):
    commands = _dry_run(headline, capsys, "--quick", "--only", "nmf,lowrank",
                        "--seeds", "4,5,6", "--out-dir", str(tmp_path))
    assert list(commands) == ["lowrank", "nmf"]  # table order, not the order asked
    assert [_training_seed(a) for a in commands["lowrank"]] == ["4", "5", "6"]
    assert _flag(commands["nmf"][0], "--seeds") == "4,5,6"
    assert _flag(commands["lowrank"][0], "--train-limit") == "300"  # the quick arguments


def test_nas_seeds_search_against_one_latency_table(headline, capsys, tmp_path):
    """The first NAS seed measures the latency table; the others load it, so the three
    searches aim at the same millisecond targets and none times ops under another's load."""
    runs = _dry_run(headline, capsys, "--only", "nas", "--out-dir", str(tmp_path))["nas"]
    tables = {_flag(a, "--table") for a in runs}
    assert len(runs) == 3 and tables == {str(tmp_path / "work" / "nas" / "latency-table.json")}


def test_refusals(headline, capsys, tmp_path):
    results = BENCH.parent / "results"
    assert headline.main(["--quick", "--dry-run", "--out-dir", str(results / "x")]) == 2
    assert "--quick" in capsys.readouterr().err
    assert headline.main(["--dry-run", "--only", "moe,nope"]) == 2
    assert "unknown entry nope" in capsys.readouterr().err
    assert headline.main(["--dry-run", "--seeds", "1,1"]) == 2
    # a quick run without --out-dir goes to a fresh temporary directory, not the results
    out = headline.out_dir(None, quick=True)
    assert results not in out.parents and out.is_dir()
    out.rmdir()


def test_pool_means_and_sds_over_seeds(headline, tmp_path):
    per_seed = {
        0: {"args": {"lr": 0.1}, "results": {"tt": {"accuracy": 0.80, "speedup_b64": 1.5}}},
        1: {"args": {"lr": 0.1}, "results": {"tt": {"accuracy": 0.84, "speedup_b64": 1.7}}},
        2: {"args": {"lr": 0.1}, "results": {"tt": {"accuracy": 0.82, "extra": 3}}},
    }
    rows = dict(headline.pool(per_seed))
    assert rows == {"results.tt.accuracy": [0.80, 0.84, 0.82]}  # only keys every seed has
    assert headline.mean_sd(rows["results.tt.accuracy"]) == (
        f"{statistics.mean([0.8, 0.84, 0.82]):.4g} ± {statistics.stdev([0.8, 0.84, 0.82]):.2g}")
    assert dict(headline.pool(per_seed, r"speedup")) == {}
    # the early-exit figures are read from the JSON comment line of its results file
    md = tmp_path / "ee.md"
    md.write_text("# x\n\n<!-- early-exit numbers: {\"sdn\": {\"saved\": 0.41}} -->\n")
    assert headline.read_output(md) == {"sdn": {"saved": 0.41}}
    assert headline.read_output(tmp_path / "missing.json") is None


@pytest.mark.slow
def test_quick_runs_two_cheap_entries(tmp_path, data_dir):
    data = str(data_dir)  # skipped cleanly when the shared data directory is absent
    out = tmp_path / "hl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--only",
                           "lowrank-speed,lowrank", "--seeds", "0,1", "--out-dir", str(out),
                           "--data-dir", data], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("lowrank", "lowrank-speed"):
        text = (out / f"{name}.md").read_text()
        assert text.startswith("# Headline: ") and "Command: `python " in text
        assert "loadavg" in text
        # one row per seed, or one run for the timing entry
        assert ("\n| 0 | `python" in text) == (name == "lowrank")
        assert ("\n| - | `python" in text) == (name == "lowrank-speed")
    speed = json.loads((out / "lowrank-speed_run.json").read_text())
    assert speed["models"] == ["dense", "tt plan B"] and "ORT" in speed["layouts"]
    pooled = (out / "lowrank.md").read_text()
    assert "mean ± sd over 2 seeds" in pooled and "accuracy" in pooled
    for seed in (0, 1):
        assert (out / f"lowrank_seed{seed}.json").is_file()
