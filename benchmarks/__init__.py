"""The Pruning Lab performance harness (see README.md)."""
