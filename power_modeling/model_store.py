"""Save and load fitted ``CrossWorkloadModel`` files in a format whose loading never runs code.

A model file is a ``skops.io`` archive (JSON schema plus ``.npy`` arrays), not a pickle: a pickle
executes whatever its author wrote when it is opened, and a model file travels between machines
and people. Loading first lists the types the file would construct and refuses it unless every
one of them is on ``TRUSTED`` (the three types a fitted model is made of beyond what skops trusts
by default: the model class and the two scikit-learn tree structures), so a file naming any
other class is rejected before anything in it is built.

The package ships two models trained on all 24 reference V100 applications (outlier rows left
out): ``shipped_model(activity=True)`` needs the max-clock activity counters (DCGM or reference
data), ``shipped_model(activity=False)`` only f/f_max, power at max relative to TDP and run time
at max (what NVML measurements such as the Stable Diffusion runs have). ``train_shipped_models``
rebuilds them.
"""

from __future__ import annotations

import copy
import datetime as _dt
import io
import json
import zipfile
from functools import lru_cache
from pathlib import Path

from sd_energy_contract.files import write_atomic

from .io import DataError
from .models import CrossWorkloadModel

FORMAT = "power_modeling.CrossWorkloadModel"
FORMAT_VERSION = 1
TRUSTED = frozenset({
    "power_modeling.models.CrossWorkloadModel",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
})
DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED = {True: "cross_v100_reference.skops", False: "cross_v100_reference_noactivity.skops"}


def save_model(model: CrossWorkloadModel, path: str | Path, metadata: dict | None = None) -> Path:
    """Write a fitted model to ``path`` (``.skops`` by convention) and return the path.

    ``metadata`` (JSON-serialisable: what data, which command, the CV figures) travels with the
    model and comes back as ``load_model(path).metadata_``; the library versions, the creation
    time and what the model was trained on are added. The file is written next to its target and
    renamed into place, so a crash never leaves half a model under the final name.
    """
    import sklearn
    import skops
    import skops.io as sio

    if not isinstance(model, CrossWorkloadModel) or not hasattr(model, "models_"):
        raise DataError(f"{path}: save_model needs a fitted CrossWorkloadModel, got {type(model).__name__}")
    meta = dict(metadata or {})
    try:
        meta = json.loads(json.dumps(meta))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: metadata must be JSON-serialisable ({exc})") from None
    meta.setdefault("created_utc", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta.setdefault("sklearn_version", sklearn.__version__)
    meta.setdefault("skops_version", skops.__version__)
    meta.setdefault("workloads", list(model.workloads_))
    meta.setdefault("gpus", list(model.trained_gpus_))
    meta.setdefault("features", list(model.feature_names_))
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "metadata": meta, "model": model}
    path = Path(path)
    buf = io.BytesIO()
    sio.dump(payload, buf, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
    write_atomic(path, buf.getvalue())
    return path


def load_model(path: str | Path) -> CrossWorkloadModel:
    """The model saved at ``path``, with its metadata as ``metadata_``.

    Refuses (``DataError``, one line naming the file) a missing or unreadable file, anything that is
    not a skops archive (a pickle, garbage), an archive that would construct a type outside
    ``TRUSTED``, and a skops archive of something other than a saved ``CrossWorkloadModel``.
    """
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such model file")
    try:
        found = set(sio.get_untrusted_types(file=path))
    except Exception as exc:  # any parse failure means "not a model file"
        raise DataError(f"{path}: not a model file saved by save_model ({_why(exc)})") from None
    refused = sorted(found - TRUSTED)
    if refused:
        raise DataError(f"{path}: refused, it would construct type(s) a model file never holds: {', '.join(refused)}")
    try:
        payload = sio.load(path, trusted=sorted(found))
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as a model file ({_why(exc)})") from None
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT
            and isinstance(payload.get("model"), CrossWorkloadModel)):
        raise DataError(f"{path}: a skops file, but not a CrossWorkloadModel saved by save_model")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(f"{path}: model file format {version!r} is newer than this version reads ({FORMAT_VERSION})")
    model = payload["model"]
    model.metadata_ = payload.get("metadata") or {}
    return model


def _why(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


@lru_cache(maxsize=2)
def _load_shipped(activity: bool) -> CrossWorkloadModel:
    path = DATA_DIR / SHIPPED[activity]
    if not path.is_file():
        raise DataError(f"{path}: the shipped model is missing; rebuild it with "
                        "power_modeling.model_store.train_shipped_models(<reference CSVs>)")
    return load_model(path)


def shipped_model(activity: bool = True) -> CrossWorkloadModel:
    """The model shipped with the package, trained on the 24 reference V100 applications.

    ``activity=False`` gives the one that needs no activity counters (NVML-only data). Each call
    returns a fresh copy, so changing it does not change what the next caller gets.
    """
    return copy.deepcopy(_load_shipped(bool(activity)))


def train_shipped_models(paths: list[str | Path], out_dir: str | Path = DATA_DIR,
                         **params) -> dict[str, Path]:
    """Fit the shipped models on ``paths`` (the reference CSVs) and write them into ``out_dir``.

    Both are fitted on ``models.usable(feature_table(...))`` (locked clocks, screened rows only),
    one with activity counters and one without, with power at max relative to the GPU type's TDP
    (from ``configs/gpus.yaml`` when the table does not carry it) so they can speak to another GPU
    type. ``params`` go to ``CrossWorkloadModel``. Returns ``{"activity": path, "noactivity": path}``.
    """
    from .features import feature_table
    from .io import load_runs
    from .models import POWER_TDP, power_relative_to_tdp, usable

    paths = [Path(p) for p in paths]
    full = feature_table(load_runs(paths))
    table = usable(full)
    if table.empty:
        raise DataError(f"{', '.join(map(str, paths))}: no usable locked-clock rows to train on")
    if POWER_TDP not in table or table[POWER_TDP].isna().any():
        rel = power_relative_to_tdp(table, lookup_gpu=True)
        if rel is not None:
            table = table.assign(**{POWER_TDP: rel})
    out: dict[str, Path] = {}
    for activity in (True, False):
        model = CrossWorkloadModel(use_activity=activity, **params).fit(table)
        meta = {"trained_on": [p.name for p in paths], "rows": len(table), "rows_left_out": len(full) - len(table),
                "use_activity": activity,
                "params": {k: v for k, v in model.get_params().items() if v is None or isinstance(v, (int, float, str, bool))},
                "rebuild": "power_modeling.model_store.train_shipped_models(<reference CSVs>)"}
        out["activity" if activity else "noactivity"] = save_model(model, Path(out_dir) / SHIPPED[activity], meta)
    _load_shipped.cache_clear()
    return out
