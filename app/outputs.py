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
    """None when ``path`` can be created and written, else the reason."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable"
    return None
