"""Measure and control GPU energy: the sweep launcher, its backends, and the window API.

The window API is what a researcher imports into their own code::

    from profiling import EnergyMonitor, locked_clock, sweep

Its names are loaded on first use (PEP 562 ``__getattr__``), so ``import profiling.slurm`` or a
command line's ``--help`` does not pay for numpy and the backends. No submodule may be named like
an exported name: importing ``profiling.<name>`` would replace the function with the module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .driver import sweep
    from .window import (
        ClockLock,
        EnergyMonitor,
        Measurement,
        ShortWindowWarning,
        SparseSamplesWarning,
        locked_clock,
    )

# name -> the module that defines it
_LAZY = {name: "profiling.window" for name in ("EnergyMonitor", "Measurement", "ShortWindowWarning",
                                                 "SparseSamplesWarning", "ClockLock", "locked_clock")}
_LAZY["sweep"] = "profiling.driver"

__all__ = ["ClockLock", "EnergyMonitor", "Measurement", "ShortWindowWarning", "SparseSamplesWarning", "locked_clock",
           "sweep"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'profiling' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
