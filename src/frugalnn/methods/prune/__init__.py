"""Structured pruning (channels, heads) through torch-pruning: the peer baseline."""
