"""Lodestar: a learned, online router for LLM inference fleets, and the simulator that measures it."""

__version__ = "0.1.0"
