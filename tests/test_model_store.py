"""CrossWorkloadModel without activity counters, across GPUs (TDP-relative power, extrapolation notes),
and its safe persistence: round trip, refusal of files that would construct other types, shipped models."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pandas as pd
import pytest
from conftest import REFERENCE, requires_reference

from power_modeling import feature_table, load_runs
from power_modeling.io import DataError
from power_modeling.model_store import FORMAT, load_model, save_model, shipped_model, train_shipped_models
from power_modeling.models import CrossWorkloadModel, activity_columns, power_relative_to_tdp, usable

pytestmark = requires_reference()
HPC = ["LAMMPS", "LSTM", "NAMD"]
FEW = [*HPC, "bfs", "dgemm", "stream", "lavamd", "hotspot"]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """All 24 reference apps, locked and screened rows only."""
    if not REFERENCE.exists():
        pytest.skip(f"reference data not found at {REFERENCE}")
    runs = load_runs([REFERENCE / "v100_spec_21apps_dvfs.csv", REFERENCE / "v100_hpc_3apps_dvfs.csv"])
    return usable(feature_table(runs))


@pytest.fixture(scope="module")
def small(table) -> pd.DataFrame:
    few = table[table["workload"].isin(FEW)]
    assert few["workload"].nunique() >= 6
    if "power_tdp_at_max" not in few:  # a features.py that does not add it yet
        few = few.assign(power_tdp_at_max=power_relative_to_tdp(few, lookup_gpu=True))
    return few


@pytest.fixture(scope="module")
def fitted(small) -> CrossWorkloadModel:
    """Trained on all the few apps but LAMMPS (quick settings: the tests check behaviour, not accuracy)."""
    return CrossWorkloadModel(n_estimators=15).fit(small[small["workload"] != "LAMMPS"])


def _lammps(table):
    return table[table["workload"] == "LAMMPS"]


def test_round_trip_gives_identical_predictions(fitted, small, tmp_path):
    path = save_model(fitted, tmp_path / "m.skops", {"note": "round trip", "cv": {"power_mape": 0.04}})
    assert path == tmp_path / "m.skops" and path.stat().st_size < 5e6
    back = load_model(path)
    test = _lammps(small)
    assert np.array_equal(back.predict_power(test), fitted.predict_power(test))
    assert np.array_equal(back.predict_time(test), fitted.predict_time(test))
    assert back.get_params() == fitted.get_params()
    assert back.feature_names_ == fitted.feature_names_ and back.workloads_ == fitted.workloads_
    assert back.feature_ranges_ == fitted.feature_ranges_ and back.trained_gpus_ == ["V100"]
    assert back.metadata_["note"] == "round trip" and back.metadata_["cv"] == {"power_mape": 0.04}
    assert back.metadata_["workloads"] == fitted.workloads_ and "sklearn_version" in back.metadata_
    assert not list(tmp_path.glob(".*tmp"))  # written to a temporary name and renamed into place


class _Planted:
    """An arbitrary class in a model file: loading must refuse it before constructing it."""

    built = False

    def __setstate__(self, state):
        _Planted.built = True
        self.__dict__.update(state)


class _Reduce:
    """A pickle that would create a file when unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def _one_line_error(path, match):
    with pytest.raises(DataError, match=match) as info:
        load_model(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_files_that_are_not_safe_models_are_refused(fitted, tmp_path):
    import skops.io as sio
    from sklearn.linear_model import LinearRegression

    planted = tmp_path / "planted.skops"
    sio.dump({"format": FORMAT, "format_version": 1, "metadata": {}, "model": _Planted()}, planted)
    assert "_Planted" in _one_line_error(planted, "refused, it would construct type")
    assert not _Planted.built  # refused before anything in the file was built

    marker = tmp_path / "pwned"
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps(_Reduce(marker)))
    _one_line_error(pickled, "not a model file saved by save_model")
    assert not marker.exists()

    garbage = tmp_path / "garbage.skops"
    garbage.write_bytes(b"\x00not a zip at all" * 20)
    _one_line_error(garbage, "not a model file")
    broken = tmp_path / "broken.skops"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("schema.json", "{ truncated")
    _one_line_error(broken, "not a model file")
    (tmp_path / "empty.skops").write_bytes(b"")
    _one_line_error(tmp_path / "empty.skops", "not a model file")
    _one_line_error(tmp_path / "missing.skops", "no such model file")

    other = tmp_path / "other.skops"
    sio.dump(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]), other)
    _one_line_error(other, "not a CrossWorkloadModel")
    wrong = tmp_path / "wrong.skops"
    sio.dump({"format": "something else", "format_version": 1, "model": "x"}, wrong)
    _one_line_error(wrong, "not a CrossWorkloadModel")
    newer = tmp_path / "newer.skops"
    sio.dump({"format": FORMAT, "format_version": 99, "metadata": {}, "model": fitted}, newer)
    _one_line_error(newer, "newer than this version reads")
    with pytest.raises(DataError, match="needs a fitted CrossWorkloadModel"):
        save_model(CrossWorkloadModel(), tmp_path / "unfitted.skops")
    with pytest.raises(DataError, match="JSON-serialisable"):
        save_model(fitted, tmp_path / "meta.skops", {"bad": object()})


@pytest.mark.parametrize("activity", [True, False])
def test_shipped_models_load_and_predict_sensibly(table, activity):
    model = shipped_model(activity)
    assert model.use_activity is activity and bool(model.activity_names_) is activity
    assert len(model.workloads_) == 24 and model.trained_gpus_ == ["V100"]
    assert model.power_feature_ == "power_tdp_at_max"
    assert model.metadata_["use_activity"] is activity
    for app in HPC:
        rows = table[table["workload"] == app].sort_values("f_rel")
        if not activity:
            rows = rows.drop(columns=[c for c in rows if c.endswith("_active_at_max") or c.endswith("occupancy_at_max")])
        p, t = model.predict_power(rows), model.predict_time(rows)
        assert np.mean(np.abs(p / rows["power_w_mean"] - 1)) < 0.05, app  # seen in training: close
        assert np.mean(np.abs(t / rows["time_s_mean"] - 1)) < 0.05, app
        assert np.corrcoef(rows["f_rel"], p)[0, 1] > 0.9 and np.corrcoef(rows["f_rel"], t)[0, 1] < -0.5
        assert model.extrapolation(rows) == []
    assert shipped_model(activity) is not shipped_model(activity)  # callers get their own copy


def test_extrapolation_names_gpu_and_clock_outside_training(fitted, small):
    rows = _lammps(small).drop(columns=["tdp_w", "power_tdp_at_max"], errors="ignore")
    assert fitted.extrapolation(rows) == []
    h100 = rows.assign(gpu="H100")  # TDP 400 W from configs/gpus.yaml
    low = h100.iloc[[0]].assign(f_rel=0.19, time_s_at_max=500.0)
    notes = fitted.extrapolation(pd.concat([h100, low]))
    assert "GPU H100 not in training data (V100)" in notes
    assert "f/f_max 0.19 below the trained 0.37-1.00 (LAMMPS)" in notes
    assert any(n.startswith("run time at max (s) 500 above the trained") for n in notes), notes
    hot = rows.assign(dram_active_at_max=5.0)
    assert any(n.startswith("dram_active_at_max 5.00 above the trained") for n in fitted.extrapolation(hot))


def test_power_relative_to_tdp_from_any_source(fitted, small):
    """Trained on power at max / TDP; a table may carry it, or tdp_w, or only a known GPU type."""
    assert fitted.power_feature_ == "power_tdp_at_max"
    rows = _lammps(small).drop(columns=["tdp_w", "power_tdp_at_max"], errors="ignore")
    ref = fitted.predict_power(rows.assign(power_tdp_at_max=rows["power_w_at_max"] / 250.0))
    assert np.allclose(fitted.predict_power(rows.assign(tdp_w=250.0)), ref)
    assert np.allclose(fitted.predict_power(rows), ref)  # V100 -> 250 W from configs/gpus.yaml
    with pytest.raises(DataError, match="power relative to TDP"):
        fitted.predict_power(rows.assign(gpu="no-such-gpu"))
    watts = CrossWorkloadModel(n_estimators=10).fit(small.drop(columns=["tdp_w", "power_tdp_at_max"], errors="ignore"))
    assert watts.power_feature_ == "power_w_at_max"


def test_no_activity_model_works_without_counters_and_activity_model_refuses(fitted, small):
    plain = small.drop(columns=activity_columns(small))
    assert activity_columns(plain) == []
    model = CrossWorkloadModel(n_estimators=30, use_activity=False).fit(plain[plain["workload"] != "LAMMPS"])
    assert model.activity_names_ == [] and model.feature_names_ == ["f_rel", "power_tdp_at_max", "log_time_s_at_max"]
    test = _lammps(plain)
    p, t = model.predict_power(test), model.predict_time(test)
    assert np.all(np.isfinite(p)) and np.all(p > 0) and np.all(t > 0)
    assert np.allclose(model.predict_power(_lammps(small)), p)  # counters present are simply not used
    with pytest.raises(DataError, match="lacks \\(or has NaN for\\) .*dram_active_at_max") as info:
        fitted.predict_power(test)
    assert "use_activity=False" in str(info.value)
    with pytest.raises(DataError, match="fp_active_at_max"):
        fitted.predict_time(_lammps(small).assign(fp_active_at_max=np.nan))
    with pytest.raises(DataError, match="no activity counters"):
        CrossWorkloadModel(n_estimators=5).fit(plain)


def test_neighbour_part_matches_the_per_row_definition(fitted, small):
    """The vectorised neighbour curves equal the per-row loop they replace."""
    test = _lammps(small)
    X = fitted._features(test)
    z_rows = (X.iloc[:, 1:].to_numpy() - fitted.feature_mean_) / fitted.feature_std_
    for target, col in (("power_w_rel", 1), ("time_s_rel", 2)):
        expect = []
        for f_rel, z in zip(X["f_rel"], z_rows, strict=True):
            d = np.nansum((fitted.workload_z_ - z) ** 2, axis=1)
            near = np.argsort(d)[: fitted.n_neighbors]
            logs = [np.interp(f_rel, fitted.curves_[fitted.workloads_[i]][:, 0], fitted.curves_[fitted.workloads_[i]][:, col])
                    for i in near]
            expect.append(np.average(logs, weights=1.0 / (d[near] + 1e-3)))
        assert np.allclose(fitted._neighbor_log_rel(X, target), expect, rtol=0, atol=1e-12)


def test_train_shipped_models_rebuilds_both(tmp_path):
    out = train_shipped_models([REFERENCE / "v100_hpc_3apps_dvfs.csv"], tmp_path, n_estimators=20)
    assert sorted(out) == ["activity", "noactivity"]
    for key, path in out.items():
        model = load_model(path)
        assert model.use_activity is (key == "activity") and model.workloads_ == HPC
        assert model.metadata_["trained_on"] == ["v100_hpc_3apps_dvfs.csv"] and model.n_estimators == 20
        assert model.power_feature_ == "power_tdp_at_max"
