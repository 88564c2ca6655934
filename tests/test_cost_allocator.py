"""retain_freed_memory: applies on glibc, is idempotent, leaves results unchanged."""

from __future__ import annotations

import platform
import sys

import pytest
import torch

from frugalnn.cost.allocator import retain_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt settings are glibc-only")
def test_applies_on_glibc_and_is_idempotent() -> None:
    conv = torch.nn.Conv2d(4, 8, 3, padding=1).eval()
    x = torch.randn(16, 4, 64, 64)  # 1 MiB input, 2 MiB output: above glibc's default mmap size
    with torch.inference_mode():
        before = conv(x)
        assert retain_freed_memory() is True
        assert retain_freed_memory() is True
        torch.testing.assert_close(conv(x), before, rtol=0, atol=0)
