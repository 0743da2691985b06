"""From launcher results to feature tables, power/time models, optimal clocks and reports.

Needs no torch and no GPU. The same API serves the CLI (``python -m power_modeling``) and notebooks::

    from power_modeling import load_runs, feature_table, choose_clock
    table = feature_table(load_runs(["results/h100_sdxl"]))
"""

from .features import feature_table
from .io import DataError, load_runs
from .models import CrossWorkloadModel, FGCSModel, PhysicalModel, leave_one_workload_out
from .phase_policy import compare_phase_policies
from .selection import choose_all, choose_clock, evaluate_guided, guided_choice

__all__ = ["load_runs", "feature_table", "DataError", "FGCSModel", "PhysicalModel", "CrossWorkloadModel",
           "leave_one_workload_out", "choose_clock", "choose_all", "guided_choice", "evaluate_guided",
           "compare_phase_policies"]
