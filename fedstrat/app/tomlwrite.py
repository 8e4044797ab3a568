"""The one writer of flat TOML documents in fedstrat.

Used for a run directory's ``config.toml``, the ``--run-config`` file given to ``flwr run``,
the SuperLink connection in a private ``FLWR_HOME`` (``config.toml``), ``--node-config`` values
of a SuperNode, and ``fedstrat simulate --dry-run``. Values are scalars only (bool, int, float,
str); keys are bare TOML keys (letters, digits, ``-``, ``_``). Reading is ``tomllib``'s job.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value: Any, *, allow_nonfinite: bool = False) -> str:
    """TOML text of one scalar: ``true``/``false``, an integer, a float, a basic string.

    Floats are written with ``repr`` (shortest round-trip form, always with ``.`` or an
    exponent). Non-finite floats raise ``ValueError`` unless ``allow_nonfinite`` (then TOML's
    ``inf``/``-inf``/``nan``). A string is written as JSON, which is a valid TOML basic string.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            if allow_nonfinite:
                return repr(value)
            raise ValueError(f"cannot write non-finite float {value} to TOML")
        text = repr(value)
        return text if ("." in text or "e" in text) else text + ".0"
    if isinstance(value, str):
        return json.dumps(value)
    raise ValueError(f"TOML values must be bool, int, float or str, got {value!r}")


def toml_key(key: str) -> str:
    """``key`` if it is a bare TOML key, else ``ValueError`` (no quoting, no dotted keys)."""
    if not _BARE_KEY.fullmatch(key):
        raise ValueError(f"invalid TOML key {key!r} (letters, digits, '-' and '_' only)")
    return key


def flat_toml(
    values: Mapping[str, Any], table: str | None = None, *, allow_nonfinite: bool = False
) -> str:
    """A flat TOML document ``key = value`` per line, optionally under ``[table]``.

    Raises ``ValueError`` for a key that is not a bare key or a value :func:`toml_value`
    cannot write.
    """
    lines = [f"[{table}]"] if table else []
    lines += [
        f"{toml_key(str(key))} = {toml_value(val, allow_nonfinite=allow_nonfinite)}"
        for key, val in values.items()
    ]
    return "\n".join(lines) + "\n"
