"""Files the app writes: PNGs with their parameters embedded, JSON written atomically, safe names."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

from PIL import PngImagePlugin

from sd_energy_contract.files import write_atomic


def slugify(text: str, max_len: int = 48) -> str:
    """A file-name-safe slug: only [a-z0-9-], so a prompt can never climb out of the output dir."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "prompt"


def safe_child(directory: Path, name: str) -> Path:
    path = (directory / name).resolve()
    if directory.resolve() not in path.parents:
        raise ValueError(f"refusing to write outside {directory}: {name!r}")
    return path


def write_json_atomic(path: Path, data) -> None:
    """Write to a temp file in the same directory, fsync, rename: readers see old or new, never half."""
    write_atomic(path, json.dumps(data, indent=2, default=str))


def save_png(image, path: Path, parameters: dict) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", json.dumps(parameters, default=str))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    write_atomic(path, buf.getvalue())


def check_writable_dir(path: Path) -> str | None:
    """None when ``path`` is, or could be created as, a writable directory; else the reason.

    Creates nothing: a request that fails a later check must leave no directory behind, so the
    nearest existing ancestor is checked instead of making the directory to see whether it can be.
    """
    path = Path(path).absolute()
    if path.exists():
        if not path.is_dir():
            return "exists and is not a directory"
        return None if os.access(path, os.W_OK | os.X_OK) else "not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable"
    return None


def check_file_prefix(prefix: str) -> str | None:
    """None when ``prefix`` can only start a file name inside the output directory, else why not.

    The prefix is pasted in front of every image and config file name; a separator or ``..`` in it
    would write elsewhere (or fail at the first save, after the whole generation had run).
    """
    if "/" in prefix or "\\" in prefix or (os.altsep and os.altsep in prefix):
        return "must be a file-name prefix, without path separators"
    if ".." in prefix:
        return "must not contain '..'"
    if any(ord(c) < 32 for c in prefix):
        return "must not contain control characters"
    if len(prefix) > 100:
        return "must be at most 100 characters (file names are limited to 255 bytes)"
    return None
