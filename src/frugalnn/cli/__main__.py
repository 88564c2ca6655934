"""``python -m frugalnn.cli`` (what torchrun runs)."""

from frugalnn.cli import entry

entry()
