"""Many launcher CSV files read as one, once each is shown to be undamaged.

``profiling.backends.replay.read_table`` reads a file row by row in Python so it can skip and
name every damaged row (a repeated header, a row of the wrong width, a word in a number column).
That costs tens of microseconds a row plus pandas' fixed cost per file, which a centre's campaign
(10 000 results directories, a million rows) pays for nothing: its files are nearly all clean.

Here a file is first checked with array operations over its bytes: every record (a line outside
quotes) has the header's number of fields, none starts with the header's first name, the file
ends in a complete line (a torn last line is cut, as ``read_table`` cuts it), and it is UTF-8.
Files with one header are then parsed together (``BulkReader``: one ``pandas.read_csv`` call per
64 MB of them, as they come, so the raw text is never all in memory), and a file whose number
column holds something other than a number is handed back. Whatever is not shown clean goes to
``read_table`` by the caller, so what damage means and how it is reported stays in one place.
``write_csv`` is the way out: pandas' bytes, written about twice as fast.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

CHUNK = 1 << 24          # bytes scanned per step: bounds the scan's temporaries for a file of any size
WRITE_ROWS = 20_000      # rows formatted at once by write_csv
BATCH = 1 << 26          # bytes of clean files parsed per read_csv call: bounds the text held at once
QUOTE, COMMA, NEWLINE = ord('"'), ord(","), ord("\n")


@dataclass
class Clean:
    """A file shown to be undamaged: its header line, the bytes of its rows and how many rows they hold."""

    key: int                 # the caller's index of the file
    header: bytes
    body: memoryview         # the rows' bytes, a view of the file's (no copy)
    rows: int


def record_widths(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(fields per record, offset of the newline that ends it) of CSV bytes that end in a newline.

    Separators (commas, newlines) inside quotes do not count: a position is inside quotes when an
    odd number of quote characters precede it (an escaped ``""`` counts twice), so the scan follows
    the CSV grammar without parsing a value. A record's fields are its commas plus one (a blank
    line is one empty field).
    """
    arr = np.frombuffer(data, np.uint8)
    quotes, seps = [], []
    for a in range(0, len(arr), CHUNK):
        block = arr[a:a + CHUNK]
        quotes.append(np.flatnonzero(block == QUOTE) + a)
        seps.append(np.flatnonzero((block == COMMA) | (block == NEWLINE)) + a)
    quote = np.concatenate(quotes) if quotes else np.zeros(0, np.int64)
    sep = np.concatenate(seps) if seps else np.zeros(0, np.int64)
    if len(quote):
        sep = sep[np.searchsorted(quote, sep) % 2 == 0]
    ends = np.flatnonzero(arr[sep] == NEWLINE)
    return np.diff(np.r_[-1, ends]), sep[ends]


def check(key: int, data: bytes) -> Clean | None:
    """``data`` as a ``Clean`` file, or None when anything about it needs ``read_table``'s row-by-row reading."""
    if not data or b"\0" in data or data.startswith(b"\xef\xbb\xbf"):
        return None
    data = data[: data.rfind(b"\n") + 1]  # a torn last line is what a crash leaves: never data
    if not data or data.count(b'"') % 2:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    width, end = record_widths(data)
    header = data[: end[0] + 1]
    names = next(csv.reader([header.decode()]), [])
    if width[0] < 2 or len(names) != width[0] or (width[1:] != width[0]).any():
        return None                       # a short or long row, or a blank line: read_table's to judge
    first = names[0].encode()
    start = len(header) - 1               # the header's own newline: a body line starts after a newline
    if first.strip() and any(data.find(p, start) >= 0 for p in (b"\n" + first + b",", b'\n"' + first + b'"')):
        return None                       # a repeated header (two writers appended to one file), or a
    body = memoryview(data)[len(header):]  # quoted line that looks like one: read_table judges
    return Clean(key, header, body, int(len(width) - 1))


class BulkReader:
    """Clean files parsed as they come, ``BATCH`` bytes of one header per ``read_csv`` call, so at most
    a batch of raw text is held at once (a campaign's files are a gigabyte of text).

    Only ``usecols`` and the ``numeric`` columns are kept; ``categories`` are read as categorical
    text (few distinct values over many rows). A file with a value in a ``numeric`` column that is
    not a number is rejected (its rows are left out, its key returned by ``result``) for the caller
    to read with ``read_table``, which names the row.
    """

    def __init__(self, numeric: Collection[str], usecols: Collection[str] | None = None,
                 categories: Collection[str] = ()):
        self.numeric, self.usecols, self.categories = numeric, usecols, categories
        self.pending: dict[bytes, list[Clean]] = {}
        self.size: dict[bytes, int] = {}
        self.frames: list[pd.DataFrame] = []
        self.keys: list[np.ndarray] = []
        self.rejected: set[int] = set()

    def add(self, f: Clean) -> None:
        self.pending.setdefault(f.header, []).append(f)
        self.size[f.header] = self.size.get(f.header, 0) + len(f.body)
        if self.size[f.header] >= BATCH:
            self._flush(f.header)

    def _flush(self, header: bytes) -> None:
        batch = self.pending.pop(header, [])
        self.size.pop(header, None)
        if not batch:
            return
        names = next(csv.reader([header.decode()]))
        cols = [c for c in names if self.usecols is None or c in self.usecols or c in self.numeric]
        df, owner, bad = _parse(header, batch, cols, self.numeric, self.categories)
        self.frames.append(df)
        self.keys.append(owner)
        self.rejected |= bad

    def result(self) -> tuple[pd.DataFrame, np.ndarray, set[int]]:
        """(rows of every clean file, each row's file key, keys of the files rejected by the number check)."""
        for header in list(self.pending):
            self._flush(header)
        frames = [f for f in self.frames if len(f)]
        keys = [k for k, f in zip(self.keys, self.frames, strict=True) if len(f)]
        if not frames:
            return pd.DataFrame(), np.zeros(0, int), self.rejected
        if len(frames) > 1:  # one set of categories per column, so concatenating keeps them categorical
            for name in {c for f in frames for c in f.columns if isinstance(f[c].dtype, pd.CategoricalDtype)}:
                union = pd.Index(sorted({v for f in frames if name in f for v in f[name].cat.categories}))
                for f in frames:
                    if name in f and isinstance(f[name].dtype, pd.CategoricalDtype):
                        f[name] = f[name].cat.set_categories(union)
        return pd.concat(frames, ignore_index=True), np.concatenate(keys), self.rejected


def _parse(header: bytes, batch: list[Clean], cols: list[str], numeric: Collection[str], categories: Collection[str]
           ) -> tuple[pd.DataFrame, np.ndarray, set[int]]:
    owner = np.repeat([f.key for f in batch], [f.rows for f in batch])
    df = pd.read_csv(io.BytesIO(header + b"".join(f.body for f in batch)), usecols=cols, low_memory=False,
                     dtype={c: "category" for c in cols if c in categories})
    if len(df) != len(owner):             # the scan and the parser disagree: trust neither, read each file alone
        return df.iloc[:0], owner[:0], {f.key for f in batch}
    for name in [c for c in cols if c in categories]:
        values = df[name].cat.categories
        if values.empty or pd.to_numeric(pd.Series(values), errors="coerce").notna().all():
            df[name] = pd.to_numeric(df[name].astype(object))  # what a plain read makes of it: numbers, or NaN
    bad = np.zeros(len(df), bool)
    for name in [c for c in cols if c in numeric]:
        col = df[name]
        if pd.api.types.is_bool_dtype(col):   # True/False parse as booleans, and are no numbers
            bad |= col.notna().to_numpy()
            continue
        if pd.api.types.is_numeric_dtype(col):
            continue
        number = pd.to_numeric(col, errors="coerce")
        bad |= (number.isna() & col.notna()).to_numpy()
        df[name] = number
    rejected = set(np.unique(owner[bad]).tolist())
    if rejected:
        keep = ~np.isin(owner, list(rejected))
        df, owner = df[keep].reset_index(drop=True), owner[keep]
    return df, owner, rejected


def write_csv(df: pd.DataFrame, path) -> None:
    """``df.to_csv(path, index=False)``, byte for byte, about twice as fast on a campaign's tables.

    pandas formats each cell through its generic writer (~1.5 us a cell: 12 s for the feature table
    of a million runs); here each column is formatted at once (floats by ``repr``, pandas' own
    format; text quoted as the csv module quotes it) and the rows joined. Frames with a column of
    another kind (dates, categories of numbers), or of one column, go to pandas.
    """
    if df.shape[1] < 2 or any(_column_text(df[c].iloc[:1]) is None for c in df.columns):  # decided by dtype
        df.to_csv(path, index=False)
        return
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(df.columns)
    with open(path, "w", newline="") as fh:
        fh.write(buf.getvalue())
        for a in range(0, len(df), WRITE_ROWS):  # a slice at a time: the text of a whole table is GBs
            part = df.iloc[a:a + WRITE_ROWS]
            columns = [_column_text(part[c]) for c in part.columns]
            fh.write("\n".join(map(",".join, zip(*columns, strict=True))) + "\n")


def _column_text(col: pd.Series) -> list[str] | None:
    """A column's cells as CSV text, or None for a kind ``write_csv`` leaves to pandas."""
    kind = col.dtype
    if pd.api.types.is_float_dtype(kind):
        values = col.to_numpy(float)
        text = list(map(repr, values.tolist()))
        for i in np.flatnonzero(np.isnan(values)):
            text[i] = ""
        return text
    if pd.api.types.is_bool_dtype(kind) or pd.api.types.is_integer_dtype(kind):
        if isinstance(kind, pd.api.extensions.ExtensionDtype):  # nullable: pandas writes its gaps
            return None
        return list(map(str, col.tolist()))
    if pd.api.types.is_object_dtype(kind) or pd.api.types.is_string_dtype(kind):
        text = col.astype(object).where(col.notna(), "").map(str).tolist()
        joined = "\0".join(text)
        if any(ch in joined for ch in SPECIAL):  # one search of the column; then quote only where needed
            text = [_quoted(t) if any(ch in t for ch in SPECIAL) else t for t in text]
        return text
    return None


SPECIAL = ',"\n\r'  # characters that make the csv module quote a field


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'
