"""From launcher results to feature tables, power/time models, optimal clocks and reports.

Needs no torch and no GPU. The same API serves the CLI (``python -m power_modeling``) and notebooks::

    from power_modeling import load_runs, feature_table, choose_clock
    table = feature_table(load_runs(["results/h100_sdxl"]))

The names are loaded on first use (PEP 562 ``__getattr__``): ``python -m power_modeling --help``
and the commands that neither fit nor plot then never import scikit-learn, matplotlib or
scipy.stats (1.2-1.6 s of imports each time before). No submodule may be named like an exported
name: importing ``power_modeling.<name>`` would replace the function with the module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import DataError
    from .features import feature_table
    from .io import load_runs
    from .models import CrossWorkloadModel, FGCSModel, PhysicalModel, leave_one_workload_out
    from .phase_policy import compare_phase_policies
    from .selection import choose_all, choose_clock, evaluate_guided, guided_choice

# name -> the module that defines it
_LAZY = {"load_runs": "io", "feature_table": "features", "DataError": "errors", "FGCSModel": "models",
         "PhysicalModel": "models", "CrossWorkloadModel": "models", "leave_one_workload_out": "models",
         "choose_clock": "selection", "choose_all": "selection", "guided_choice": "selection",
         "evaluate_guided": "selection", "compare_phase_policies": "phase_policy"}

__all__ = ["load_runs", "feature_table", "DataError", "FGCSModel", "PhysicalModel", "CrossWorkloadModel",
           "leave_one_workload_out", "choose_clock", "choose_all", "guided_choice", "evaluate_guided",
           "compare_phase_policies"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'power_modeling' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
