"""Lifecycle phases of a sequence inside the engine model."""

WAITING, PREFILL, DECODE, DONE = 0, 1, 2, 3
