"""Quick timing check for ``fedstrat.data.table.load_table`` on a synthetic click log.

Writes ``--rows`` rows (label, 6 categorical columns, 2 numeric, a client key, a timestamp and a
multi-valued column) to a temporary CSV, then times ``load_table`` with vocabulary encoding, a
temporal split and with hashing. Usage: python benchmarks/table_load_speed.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fedstrat.data.table import load_table

SCHEMA = """
[label]
column = "click"
[fields]
categorical = ["user", "item", "site", "device", "hour", "country"]
numeric = ["price", "age"]
[fields.multi_valued]
column = "tags"
max_len = 3
[clients]
key = "user"
[split]
kind = "{split}"
timestamp = "ts"
[encoding]
mode = "{mode}"
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    n = ap.parse_args().rows
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "click": rng.integers(0, 2, n),
            "user": rng.integers(0, 100_000, n),
            "item": rng.integers(0, 50_000, n),
            "site": rng.choice([f"s{i}" for i in range(300)], n),
            "device": rng.choice(["ios", "android", "web"], n),
            "hour": rng.integers(0, 24, n),
            "country": rng.choice([f"c{i}" for i in range(60)], n),
            "price": rng.exponential(20.0, n).round(2),
            "age": rng.integers(18, 80, n),
            "ts": rng.integers(1_600_000_000, 1_700_000_000, n),
            "tags": rng.choice(["a|b", "b", "", "c|a|d", "e"], n),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "clicks.csv"
        df.to_csv(csv, index=False)
        mb = csv.stat().st_size / 1e6
        for split, mode in (
            ("random", "vocabulary"),
            ("temporal", "vocabulary"),
            ("random", "hashing"),
        ):
            schema = Path(tmp) / "schema.toml"
            schema.write_text(SCHEMA.format(split=split, mode=mode))
            t0 = time.perf_counter()
            ds = load_table(csv, schema)
            dt = time.perf_counter() - t0
            print(f"{n:,} rows ({mb:.0f} MB CSV), {split} split, {mode}: {dt:.2f} s -> {ds!r}")


if __name__ == "__main__":
    main()
