"""The reference-data CSV format: the shipped V100 DVFS tables, and what our own CSVs may add.

One row per application and clock (and run, where ``run_index`` is given). The reference names
are renamed to the project's on reading (``RENAMES``); energy is recomputed as power x time (see
the data's README). The optional columns let measured data with its artefacts be written in the
same format.
"""

from __future__ import annotations

REQUIRED = frozenset({"sm_app_clock", "application", "power_usage", "run_time"})
# DCGM activity fields as the reference tables name them -> the project's names.
ACTIVITY_COLUMNS = {"sm_active": "sm_active", "sm_occupancy": "sm_occupancy", "dram_active": "dram_active",
                    "fp64_active": "fp64_active", "fp32_active": "fp32_active", "FP16A": "fp16_active",
                    "TENSO": "tensor_active", "fp_active": "fp_active", "gr_engine_active": "gr_engine_active"}
RENAMES = {"sm_app_clock": "sm_clock_mhz", "power_usage": "avg_power_w", "run_time": "work_s",
           "application": "workload", **ACTIVITY_COLUMNS}
OPTIONAL = {
    "gpu": "GPU type (default V100, the reference data's)",
    "run_index": "repeat number",
    "warmup": "1 = an unmeasured warm-up run",
    "clock_mismatch": "1 = the lock did not take effect",
    "sm_clock_mean_mhz": "the clock measured during the run (a mismatch is judged from it as by the launcher)",
    "is_default_clock": "1 = the unlocked (default) clock",
    "synthetic": "1 = modelled, not measured",
}
DROPPED_PREFIXES = ("Unnamed",)
DROPPED = frozenset({"index"})


def is_reference_header(columns) -> bool:
    return REQUIRED <= set(columns)


def clock_mismatch(target_mhz: float, measured_mhz: float | None) -> bool:
    """Whether the clock measured during the work missed the target: the lock did not apply.

    The tolerance (15 MHz or 1 %) covers a clock that reads one bin off its lock.
    """
    if not target_mhz or measured_mhz is None or measured_mhz != measured_mhz:  # NaN
        return False
    return abs(measured_mhz - target_mhz) > max(15.0, 0.01 * target_mhz)
