"""Per-phase clock policies (``launch.sh --in-process --phase-clocks``) against the best single clock.

A policy run moves the clock with the app's phases (the UNet at one clock, the text encoder and VAE
decoder at another), so it is no measurement of any one clock: screening keeps it out of the
per-clock statistics ("phase-clock policy"), and here it is compared, workload by workload, with
the clock ``choose_clock`` recommends from the same data and with the max clock. The question a
reader has is whether following the phases beats the best fixed clock by more than the noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .features import flag_runs
from .selection import choose_clock, objective_value, pooled_rel_var, ratio_interval

COLUMNS = ["workload", "gpu", "policy", "base_clock_mhz", "n_runs", "time_s", "energy_j", "objective",
           "best_clock_mhz", "objective_vs_best_pct", "objective_vs_best_lo_pct", "objective_vs_best_hi_pct",
           "energy_vs_best_pct", "energy_vs_best_lo_pct", "energy_vs_best_hi_pct", "slowdown_vs_best_pct",
           "slowdown_vs_best_lo_pct", "slowdown_vs_best_hi_pct", "reference_clock_mhz", "energy_vs_max_pct",
           "energy_vs_max_lo_pct", "energy_vs_max_hi_pct", "slowdown_vs_max_pct", "verdict"]


def compare_phase_policies(runs: pd.DataFrame, table: pd.DataFrame, objective: str = "edp",
                           max_slowdown: float | None = 0.05) -> pd.DataFrame:
    """One row per (workload, GPU, policy): its time, energy and objective against the best single
    clock and the max clock, as "saved" percentages (positive = the policy is better) and slowdowns,
    with 95 % intervals on the workload's pooled run-to-run noise.

    ``verdict``: "beats the best single clock" / "worse than the best single clock" when the
    objective's interval excludes no change, "within the noise" otherwise, "uncertainty unknown"
    with a single run, "no single-clock sweep" when the workload has no usable per-clock data.
    """
    if "phase_policy" not in runs or not (runs["phase_policy"].fillna("") != "").any():
        return pd.DataFrame(columns=COLUMNS)
    reason = flag_runs(runs)
    policy_runs = runs[(runs["phase_policy"].fillna("") != "") & reason.isin(["", "phase-clock policy"])]
    rows = []
    wanted = set(zip(policy_runs["workload"], policy_runs["gpu"], strict=True))
    sweeps = {key: g for key, g in table.groupby(["workload", "gpu"], sort=False) if key in wanted}  # one split
    for (workload, gpu, policy), g in policy_runs.groupby(["workload", "gpu", "phase_policy"], sort=True):
        mine = sweeps.get((workload, gpu), table.iloc[:0])
        row = {"workload": workload, "gpu": gpu, "policy": policy, "base_clock_mhz": float(g["sm_clock_mhz"].median()),
               "n_runs": len(g), "time_s": float(g["time_s"].mean()), "energy_j": float(g["energy_j"].mean())}
        row["objective"] = float(objective_value(g["energy_j"], g["time_s"], objective).mean())
        if mine.empty:
            rows.append({**row, "verdict": "no single-clock sweep"})
            continue
        choice = choose_clock(mine, workload, objective, max_slowdown)
        if choice.clock_mhz is None or not np.isfinite(choice.clock_mhz):
            rows.append({**row, "verdict": "no single-clock sweep"})
            continue
        row.update(_against(g, mine, choice.clock_mhz, objective, "best"))
        row.update(_against(g, mine, choice.reference_clock_mhz, objective, "max"))
        row["best_clock_mhz"], row["reference_clock_mhz"] = choice.clock_mhz, choice.reference_clock_mhz
        lo, hi = row["objective_vs_best_lo_pct"], row["objective_vs_best_hi_pct"]
        if not (np.isfinite(lo) and np.isfinite(hi)):
            row["verdict"] = "uncertainty unknown"
        elif lo > 0:
            row["verdict"] = "beats the best single clock"
        elif hi < 0:
            row["verdict"] = "worse than the best single clock"
        else:
            row["verdict"] = "within the noise"
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def _against(policy: pd.DataFrame, mine: pd.DataFrame, clock: float, objective: str, name: str) -> dict:
    """The policy's runs against one clock's row: saved % of energy and objective, slowdown %."""
    at = mine[(mine["sm_clock_mhz"] == clock) & ~mine["is_default_clock"].astype(bool)].iloc[0]
    n_p = len(policy)
    values = {"time_s": policy["time_s"], "energy_j": policy["energy_j"],
              "objective": objective_value(policy["energy_j"], policy["time_s"], objective)}
    objective_key = {"energy": "energy_j"}.get(objective, objective)  # the table's column prefix
    clock_key = {"time_s": "time_s", "energy_j": "energy_j", "objective": objective_key}
    out = {}
    for metric, v in values.items():
        key = clock_key[metric]
        mean_p = float(v.mean())
        cv_p = float(v.std(ddof=1) / mean_p) if n_p > 1 and mean_p else float("nan")
        usable = mine[mine["n_runs"] > 0]
        rel_var, df = pooled_rel_var(np.append(usable[f"{key}_cv"].to_numpy(float), cv_p),
                                     np.append(usable["n_runs"].to_numpy(float), n_p))
        ratio, lo, hi = ratio_interval(mean_p, n_p, float(at[f"{key}_mean"]), float(at["n_runs"]), rel_var, df)
        if metric == "time_s":
            out.update({f"slowdown_vs_{name}_pct": 100 * (ratio - 1), f"slowdown_vs_{name}_lo_pct": 100 * (lo - 1),
                        f"slowdown_vs_{name}_hi_pct": 100 * (hi - 1)})
        else:
            label = "energy" if metric == "energy_j" else "objective"
            out.update({f"{label}_vs_{name}_pct": 100 * (1 - ratio), f"{label}_vs_{name}_lo_pct": 100 * (1 - hi),
                        f"{label}_vs_{name}_hi_pct": 100 * (1 - lo)})
    return out
