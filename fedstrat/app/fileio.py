"""Atomic file writes and JSON / JSON-lines text shared by every output folder.

Run directories (:mod:`fedstrat.app.rundir`), checkpoints, compare directories
(:mod:`fedstrat.app.comparedir`), plots and the measured-variance folder all write through
these, so a reader never sees a half-written file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    """Atomic UTF-8 text write (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _jsonable(value: Any, keep_inf: bool = False) -> Any:
    """NaN -> None, inf -> None (or "inf"/"-inf" with ``keep_inf``), numpy -> Python."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, keep_inf) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, keep_inf) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), keep_inf)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        if keep_inf and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return None
    return value


def json_text(obj: Any, *, keep_inf: bool = False) -> str:
    """Indented JSON (with a final newline); NaN is ``null``, infinities ``null`` or, with
    ``keep_inf``, the strings ``"inf"``/``"-inf"``."""
    return json.dumps(_jsonable(obj, keep_inf), indent=2, allow_nan=False) + "\n"


def write_json_atomic(path: Path, obj: Any, *, keep_inf: bool = False) -> None:
    """Atomic JSON write of :func:`json_text`."""
    write_text_atomic(path, json_text(obj, keep_inf=keep_inf))


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one JSON line (a single ``write`` of a complete line, then flush + fsync)."""
    line = json.dumps(_jsonable(obj), allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines of a JSON-lines file (a trailing partial line is ignored)."""
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n") and line.strip():
            out.append(json.loads(line))
    return out
