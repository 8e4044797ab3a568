"""Shared pieces of the table-loader tests: the README's MovieLens-100k schema."""

from pathlib import Path

import pytest

from fedstrat.data.base import package_dir

needs_recbole = pytest.mark.skipif(package_dir("recbole") is None, reason="recbole not installed")

# The README's schema for the exported MovieLens-100k frame (fedstrat.data.ctr.movielens100k_frame).
ML_SCHEMA = """
[label]
column = "rating"
threshold = 4

[fields]
categorical = ["user", "item", "gender", "age", "occupation", "zip", "genre", "year"]

[clients]
key = "user"
extra_keys = ["occupation", "zip"]

[split]
kind = "random"
test_fraction = 0.2
timestamp = "timestamp"
"""


def write_movielens_csv(folder: Path) -> tuple[Path, Path]:
    """MovieLens-100k exported to ``folder/ml.csv`` with :data:`ML_SCHEMA` beside it (skips the
    test without recbole)."""
    if package_dir("recbole") is None:
        pytest.skip("recbole not installed")
    from fedstrat.data.ctr import movielens100k_frame

    movielens100k_frame().to_csv(folder / "ml.csv", index=False)
    (folder / "schema.toml").write_text(ML_SCHEMA)
    return folder / "ml.csv", folder / "schema.toml"
