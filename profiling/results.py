"""The results directory as files on disk: create it, append rows, read them back, resume.

Its layout and columns are the contract in ``sd_energy_contract.layout``; this module owns the
reading and writing. Rows are appended with one ``write`` of a whole line to an ``O_APPEND``
file and fsynced, so a crash leaves at most one unterminated line, which readers drop. Per-run
files are written to a temporary name and renamed. A run is done when its row is in runs.csv,
so resuming redoes exactly the runs that have no row (or were interrupted).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from sd_energy_contract.files import append_line, complete_text, write_atomic
from sd_energy_contract.layout import (
    APP_CONFIG_FIELDS,
    DONE_STATUSES,
    LOGS,
    MANIFEST,
    RUN_FILES,
    RUNS_COLUMNS,
    RUNS_CSV,
    run_id,
)

__all__ = ["APP_CONFIG_FIELDS", "DONE_STATUSES", "RUNS_COLUMNS", "ResultsDir", "config_hash", "run_id", "write_atomic"]


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResultsDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def runs_csv(self) -> Path:
        return self.path / RUNS_CSV

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def file(self, kind: str, rid: str) -> Path:
        return self.path / kind / f"{rid}.{RUN_FILES[kind]}"

    def log(self, rid: str, stream: str) -> Path:
        return self.path / LOGS / f"{rid}.{stream}"

    def create(self, manifest: dict) -> None:
        for sub in (*RUN_FILES, LOGS):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self.write_manifest(manifest)
        if not self.runs_csv.exists():
            buf = io.StringIO()
            csv.writer(buf).writerow(RUNS_COLUMNS)
            write_atomic(self.runs_csv, buf.getvalue())

    def manifest(self) -> dict:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return {}

    def write_manifest(self, manifest: dict) -> None:
        write_atomic(self.manifest_path, json.dumps(manifest, indent=2, default=str))

    def append_row(self, row: dict) -> None:
        unknown = set(row) - set(RUNS_COLUMNS)
        if unknown:
            raise KeyError(f"not runs.csv columns: {sorted(unknown)}")
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(["" if row.get(c) is None else row.get(c) for c in self._header()])
        append_line(self.runs_csv, buf.getvalue())

    def _header(self) -> list[str]:
        """The file's own columns: a directory begun by an older version keeps its header (a prefix of
        today's columns, which are only ever added at the end), and its rows stay aligned with it."""
        with open(self.runs_csv, newline="") as fh:
            return next(csv.reader(fh), None) or RUNS_COLUMNS

    def read_rows(self) -> list[dict]:
        """Complete rows only: an unterminated last line (crash mid-write) is ignored."""
        if not self.runs_csv.exists():
            return []
        reader = csv.DictReader(io.StringIO(complete_text(self.runs_csv.read_text())))
        width = len(reader.fieldnames or [])
        return [r for r in reader if r.get("run_id") and sum(v is not None for v in r.values()) == width
                and None not in r]

    def done_run_ids(self) -> set[str]:
        return {r["run_id"] for r in self.read_rows() if r["status"] in DONE_STATUSES}
