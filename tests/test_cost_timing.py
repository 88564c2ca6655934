"""Latency harness, peak-memory tracking and machine description."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from frugalnn.cost.latency import measure_latency
from frugalnn.cost.machine import describe_machine, machine_markdown
from frugalnn.cost.memory import peak_memory
from frugalnn.errors import UserError


def test_latency_calls_threads_and_statistics(tmp_path):
    seen = []

    def fn(x):
        seen.append((torch.get_num_threads(), torch.is_inference_mode_enabled()))
        time.sleep(0.002)
        return x * 2

    torch.set_num_threads(1)
    rec = measure_latency(fn, torch.zeros(5, 3), warmup=2, repeats=6, threads=2)
    assert len(seen) == 8 and all(s == (2, True) for s in seen)
    assert torch.get_num_threads() == 1  # restored
    assert rec.threads == 2 and rec.batch_size == 5 and rec.device == "cpu"
    assert len(rec.times_ms) == 6 and rec.repeats == 6 and rec.warmup == 2
    assert 2.0 <= rec.min_ms <= rec.p10_ms <= rec.median_ms <= rec.p90_ms
    assert rec.per_example_ms == pytest.approx(rec.median_ms / 5)
    rec.save(tmp_path / "lat.json")
    data = json.loads((tmp_path / "lat.json").read_text())
    assert data["median_ms"] == rec.median_ms and data["per_example_ms"] == rec.per_example_ms


def test_latency_without_inputs_and_bad_arguments():
    rec = measure_latency(lambda: None, warmup=0, repeats=3, batch_size=7)
    assert rec.batch_size == 7 and rec.threads == torch.get_num_threads()
    assert "times_ms" not in rec.to_dict(with_times=False)
    with pytest.raises(UserError):
        measure_latency(lambda: None, repeats=0)
    with pytest.raises(UserError):
        measure_latency(lambda: None, threads=0)


def test_peak_memory_counts_live_tensors():
    def fn(x):
        a = x + 1  # 1000 floats = 4000 bytes
        b = torch.cat([a, a])  # 8000 bytes while a is alive -> peak 12000
        del a
        v = b.view(-1)[:10]  # a view allocates nothing
        c = v * 2  # 40 bytes
        del b
        return c

    rec = peak_memory(fn, torch.zeros(1000))
    assert rec.peak_bytes == 12000
    assert rec.retained_bytes == 40
    assert rec.method == "tensor_storage_tracking"


def test_peak_memory_of_sequential_mlp():
    model = nn.Sequential(nn.Linear(100, 1000), nn.ReLU(), nn.Linear(1000, 10))
    rec = peak_memory(model, torch.randn(8, 100))
    # fc1 output and ReLU output (8 x 1000 floats each) are alive together
    assert rec.peak_bytes == 2 * 8 * 1000 * 4
    inplace = nn.Sequential(nn.Linear(100, 1000), nn.ReLU(inplace=True), nn.Linear(1000, 10))
    assert peak_memory(inplace, torch.randn(8, 100)).peak_bytes == 8 * 1000 * 4 + 8 * 10 * 4


def test_describe_machine():
    info = describe_machine()
    for key in ("cpu", "cores", "torch_threads", "torch", "device", "date", "loadavg"):
        assert key in info
    assert info["torch"] == torch.__version__ and info["cores"] >= 1
    assert "torch_threads" in machine_markdown(info)
