"""Shared pieces of the table-loader tests: the README's MovieLens-100k schema."""

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
