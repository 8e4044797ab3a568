"""CountSketchStream: count_sketch of rows fed piece by piece, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from fedstrat.sampling import count_sketch
from fedstrat.sampling.sketch import CountSketchStream


@pytest.mark.parametrize("d", [7, 1000, 2 * 65536 + 17])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_stream_equals_count_sketch_of_the_stacked_rows(d, dtype):
    rng = np.random.default_rng(d)
    x = rng.normal(size=(3, d)).astype(dtype)
    stream = CountSketchStream(d, 16, 3, 3, dtype=dtype)
    cuts = sorted({0, d, *rng.integers(1, d, size=4).tolist()})
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        mask = stream.mask(a, b - a)  # made once, used for every row
        for r in range(3):
            stream.add(r, a, np.ascontiguousarray(x[r, a:b]), mask if r else None)
    assert np.array_equal(stream.result(), count_sketch(x, 16, 3))
    assert np.array_equal(stream.result([2, 0]), count_sketch(x[[2, 0]], 16, 3))


def test_stream_in_a_callers_slot_buffer_gives_the_same_sketches():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 500)).astype(np.float32)
    kept = np.full((4, 4096), np.nan, dtype=np.float32)  # garbage from an earlier use
    asked = []

    def slots(rows, width, dtype):
        asked.append((rows, width, dtype))
        return kept[:rows, :width]

    stream = CountSketchStream(500, 8, 1, 2, dtype=np.float32, slots=slots)
    assert np.shares_memory(stream.z, kept) and asked[0][2] == np.float32
    for r in range(2):
        stream.add(r, 0, x[r])
    assert np.array_equal(stream.result(), count_sketch(x, 8, 1))


def test_stream_checks_its_input():
    stream = CountSketchStream(10, 4, 0, 1)
    with pytest.raises(ValueError):
        stream.add(0, 8, np.zeros(3))
    with pytest.raises(ValueError):
        stream.add(0, 0, np.zeros(3), stream.mask(0, 2))
    bad = CountSketchStream(4, 2, 0, 1)
    bad.add(0, 0, np.array([np.inf, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError):
        bad.result()


def test_stream_converts_values_to_its_dtype_and_can_skip_the_check():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 300)).astype(np.float32)
    stream = CountSketchStream(300, 8, 2, 2)  # float64 slots
    for r in range(2):
        stream.add(r, 0, x[r, :100])  # float32 pieces, summed in float64
        stream.add(r, 100, x[r, 100:].astype(np.float64))
    assert np.array_equal(stream.result(), count_sketch(x.astype(np.float64), 8, 2))
    bad = CountSketchStream(4, 2, 0, 1)
    bad.add(0, 0, np.array([np.inf, 0.0, 0.0, 0.0]))
    assert not np.all(np.isfinite(bad.result(check=False)))


@pytest.mark.parametrize("d", [7, 2 * 65536 + 17])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blocks_of_rows_equal_count_sketch_and_leave_input_unless_overwritten(d, dtype):
    rng = np.random.default_rng(d + 1)
    x = rng.normal(size=(3, d)).astype(dtype)
    stream = CountSketchStream(d, 16, 3, 4, dtype=dtype)  # a 4th row stays empty
    cuts = sorted({0, d, *rng.integers(1, d, size=4).tolist()})
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        piece = x[:, a:b].copy()
        stream.add_block(a, piece, stream.mask(a, b - a) if i % 2 else None,
                         overwrite=bool(i % 2))
        if i % 2:  # overwritten: s(j) x_j in place
            assert np.array_equal(np.abs(piece), np.abs(x[:, a:b]))
        else:
            assert np.array_equal(piece, x[:, a:b])
    assert np.array_equal(stream.result([0, 1, 2]), count_sketch(x, 16, 3))
    assert not stream.result([3]).any()
    with pytest.raises(ValueError):
        stream.add_block(0, x[:, :2], stream.mask(0, 3))


@pytest.mark.parametrize("d", [7, 1000, 2 * 65536 + 17])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bucket_sums_in_a_scratch_block_are_the_same_sketches(d, dtype):
    rng = np.random.default_rng(d + 2)
    x = (1e3 * rng.normal(size=(5, d))).astype(dtype)
    stream = CountSketchStream(d, 16, 4, 5, dtype=dtype)
    stream.add_block(0, x.copy(), overwrite=True)
    width = stream.z.shape[1]
    work = np.full((8, width + 3), np.nan, dtype=dtype)  # larger than needed, garbage inside
    assert np.array_equal(stream.result(work=work), stream.result())
    assert np.array_equal(stream.result(work=work), count_sketch(x, 16, 4))
    for unusable in (np.empty((4, width), dtype), np.empty((5, width - 1), dtype),
                     np.empty((5, width), np.float16)):  # too few rows / columns, other dtype
        assert np.array_equal(stream.result(work=unusable), stream.result())
    bad = CountSketchStream(4, 2, 0, 1, dtype=dtype)
    bad.add(0, 0, np.array([np.inf, 0.0, 0.0, 0.0], dtype=dtype))
    with pytest.raises(ValueError):
        bad.result(work=np.empty((1, 8), dtype))
