"""The objectives a clock is chosen for, defined without importing numpy (the command line's options
list them), and their value from energy and time (numbers or arrays alike)."""

from __future__ import annotations

OBJECTIVES = ("energy", "edp", "ed2p")


def objective_value(energy_j, time_s, objective: str):
    """Energy (J), EDP (J·s) or ED²P (J·s²) from energy and time."""
    if objective == "energy":
        return energy_j
    if objective == "edp":
        return energy_j * time_s
    if objective == "ed2p":
        return energy_j * time_s**2
    raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
