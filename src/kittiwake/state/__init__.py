"""Shared state: counters that must hold across processes and nodes (docs/state.md)."""
