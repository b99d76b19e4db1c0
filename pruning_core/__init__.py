"""Pruning Lab core."""
