"""Writes that a crash cannot leave half done, and reads that ignore what a crash left.

Whole files are written to a temporary name in the same directory, fsynced and renamed. Line
files (``runs.csv``, events) are appended one whole line per ``write`` on an ``O_APPEND``
descriptor; a crash mid-write leaves at most one unterminated last line, which readers drop
(``complete_lines``) and the next writer cuts off (``append_line``).
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` in one step: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def complete_text(text: str) -> str:
    """``text`` up to and including its last newline: a torn last line is not data."""
    return text[: text.rfind("\n") + 1]


def complete_lines(path: str | Path) -> list[str]:
    """The complete lines of a line file ([] when it does not exist)."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return complete_text(text).splitlines()


def append_line(path: str | Path, line: str, fsync: bool = True) -> None:
    """Append one line as one ``write``; first cut off a torn last line a crash may have left.

    One process appends to a file at a time (the results directory has one writer), so the cut
    and the append cannot race.
    """
    path = Path(path)
    data = (line if line.endswith("\n") else line + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            os.lseek(fd, max(0, size - 1), os.SEEK_SET)
            if os.read(fd, 1) != b"\n":
                with open(path, "rb") as fh:
                    content = fh.read()
                os.ftruncate(fd, content.rfind(b"\n") + 1)
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
