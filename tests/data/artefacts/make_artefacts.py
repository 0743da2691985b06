"""Synthetic DVFS sweeps with the artefacts real campaigns show, one CSV each (reference-CSV format).

Run ``python tests/data/artefacts/make_artefacts.py`` to rewrite the CSVs next to this file; a test
checks they are what this script makes. Every sweep is one workload on an H100 NVL clock list with
a known truth (below) and 3 runs per clock unless said otherwise; the artefact is then put in:

* ``clean_coarse``: 9 clocks, 1.5 % noise, nothing wrong (the outlier rule must flag nothing);
* ``cold_start``: the job's first run (at the max clock, the reference) is 4x slower;
* ``cold_start_single_run``: one run per clock, the first (max clock) 3x slower;
* ``lock_not_applied``: at 795 and 645 MHz the lock did not take effect: the runs ran at the max
  clock and say so in ``sm_clock_mean_mhz`` (what the launcher records);
* ``lock_not_applied_unrecorded``: the same, without a measured-clock column (reads like a higher clock);
* ``stuck_power``: the power reading is stuck at one value from 1095 to 1395 MHz;
* ``slow_clock``: every repeat at 1245 MHz is 30 % slower (a noisy neighbour, throttling);
* ``bad_repeat``: one of the three runs at 1395 MHz reads 40 % low power;
* ``throttled_reference``: the two highest clocks are power-capped and run 25 % slower than
  the trend, so lower clocks look faster than the reference;
* ``flat_within_noise``: energy and time vary by under 0.5 % over the clocks, runs by 4 %: no
  clock is significantly better than the reference;
* ``single_run``: one run per clock, nothing wrong: the uncertainty is unknown.

Truth (x = f / 1785 MHz): T = 10 s * (0.6 / x + 0.4); P = 61 + 60 + 260 * x * max(0.62, x)^2 W,
the simulated H100's form (configs/gpus.yaml), with an interior energy optimum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
FMAX = 1785
COARSE = [1785, 1635, 1500, 1395, 1245, 1095, 945, 795, 645]
DENSE = list(range(1785, 599, -45))


def truth(f):
    x = np.asarray(f, float) / FMAX
    t = 10.0 * (0.6 / x + 0.4)
    p = 61 + 60 + 260 * x * np.maximum(0.62, x) ** 2
    return t, p


def sweep(clocks, runs=3, noise=0.015, seed=0) -> pd.DataFrame:
    """Runs in launcher order: highest clock first, its repeats together."""
    rng = np.random.default_rng(seed)
    rows = []
    for f in clocks:
        t, p = truth(f)
        for i in range(runs):
            tt = float(t * (1 + noise * rng.standard_normal()))
            pp = float(p * (1 + noise * rng.standard_normal()))
            rows.append({"sm_app_clock": f, "application": "synth", "gpu": "H100", "run_index": i,
                         "sm_clock_mean_mhz": float(f), "power_usage": pp, "run_time": tt})
    return pd.DataFrame(rows)


def _at(df, clock, run=None):
    m = df["sm_app_clock"] == clock
    return m & (df["run_index"] == run) if run is not None else m


def build() -> dict[str, pd.DataFrame]:
    out = {"clean_coarse": sweep(COARSE, seed=1)}
    d = sweep(COARSE, seed=2)
    d.loc[d.index[0], "run_time"] *= 4.0
    out["cold_start"] = d
    d = sweep(DENSE, runs=1, noise=0.01, seed=3)
    d.loc[d.index[0], "run_time"] *= 3.0
    out["cold_start_single_run"] = d
    d = sweep(COARSE, seed=4)
    t_max, p_max = truth(FMAX)
    for f in (795, 645):
        d.loc[_at(d, f), ["run_time", "power_usage", "sm_clock_mean_mhz"]] = [t_max, p_max, float(FMAX)]
    out["lock_not_applied"] = d
    out["lock_not_applied_unrecorded"] = d.drop(columns="sm_clock_mean_mhz")
    d = sweep(COARSE, seed=5)
    d.loc[d["sm_app_clock"].between(1095, 1395), "power_usage"] = 250.0
    out["stuck_power"] = d
    d = sweep(COARSE, seed=6)
    d.loc[_at(d, 1245), "run_time"] *= 1.3
    out["slow_clock"] = d
    d = sweep(COARSE, seed=7)
    d.loc[_at(d, 1395, 1), "power_usage"] *= 0.6
    out["bad_repeat"] = d
    d = sweep(COARSE, seed=8)
    d.loc[d["sm_app_clock"] >= 1635, "run_time"] *= 1.25
    out["throttled_reference"] = d
    d = sweep(COARSE, noise=0.04, seed=9)
    t_ref, p_ref = truth(FMAX)
    d["run_time"] = t_ref * d["run_time"] / truth(d["sm_app_clock"])[0] * (1 - 0.002 * (d["sm_app_clock"] < FMAX))
    d["power_usage"] = p_ref * d["power_usage"] / truth(d["sm_app_clock"])[1]
    out["flat_within_noise"] = d
    out["single_run"] = sweep(DENSE, runs=1, noise=0.01, seed=10)
    return out


def write(directory: Path = HERE) -> list[Path]:
    paths = []
    for name, df in build().items():
        path = directory / f"{name}.csv"
        df.round(6).to_csv(path, index=False)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write():
        print(p)
