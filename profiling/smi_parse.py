"""Parsers for ``nvidia-smi`` text output (captures include prompts and banners; we skip them)."""

from __future__ import annotations

import re

_MEM = re.compile(r"^\s*Memory\s*:\s*(\d+)\s*MHz\s*$")
_GFX = re.compile(r"^\s*Graphics\s*:\s*(\d+)\s*MHz\s*$")
_GPU = re.compile(r"^GPU\s+([0-9A-Fa-f:.]+)\s*$")


def parse_supported_clocks(text: str) -> dict[str, dict[int, list[int]]]:
    """``nvidia-smi -q -d SUPPORTED_CLOCKS`` -> {bus id: {memory MHz: [graphics MHz, descending]}}.

    A capture may hold several GPUs and several memory clocks per GPU (H100 lists its SM
    clocks once per memory clock). Lines outside a ``Supported Clocks`` block are ignored.
    """
    gpus: dict[str, dict[int, list[int]]] = {}
    gpu = mem = None
    for line in text.splitlines():
        if m := _GPU.match(line):
            gpu = m.group(1)
            key, n = gpu, 1
            while key in gpus:  # two captures of the same bus id (two nodes) stay apart
                n += 1
                key = f"{gpu}#{n}"
            gpu = key
            gpus[gpu] = {}
            mem = None
        elif gpu and (m := _MEM.match(line)):
            mem = int(m.group(1))
            gpus[gpu].setdefault(mem, [])
        elif gpu and mem is not None and (m := _GFX.match(line)):
            gpus[gpu][mem].append(int(m.group(1)))
    return {g: {mc: sorted(set(c), reverse=True) for mc, c in mems.items() if c} for g, mems in gpus.items() if mems}


NOT_AVAILABLE = frozenset({"[N/A]", "N/A", "[Not Supported]", "[Unknown Error]", ""})


def parse_query_line(line: str, fields: list[str]) -> dict[str, float | str | None] | None:
    """One ``--format=csv,noheader,nounits`` line -> {field: value}; None for a line of another width
    (an error message, a banner, a line of a query with other fields). [N/A] becomes None."""
    values = [v.strip() for v in line.strip().split(",")]
    if len(values) != len(fields) or not line.strip():
        return None
    row: dict[str, float | str | None] = {}
    for name, v in zip(fields, values, strict=True):
        if v in NOT_AVAILABLE:
            row[name] = None
        else:
            try:
                row[name] = float(v)
            except ValueError:
                row[name] = v
    return row


def parse_query_csv(text: str, fields: list[str]) -> list[dict[str, float | str | None]]:
    """``--query-gpu=a,b --format=csv,noheader,nounits`` -> one dict per GPU; [N/A] becomes None."""
    return [row for line in text.strip().splitlines() if (row := parse_query_line(line, fields)) is not None]


def parse_mask(value: float | str | None) -> int | None:
    """A clock-event (throttle) reasons field, ``0x0000000000000004``, as an int; None where absent."""
    if value is None:
        return None
    try:
        return int(value, 16) if isinstance(value, str) else int(value)
    except ValueError:
        return None
