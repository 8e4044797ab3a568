"""count_sketch / sketch_update(method=...): definition, unbiasedness, variance, determinism."""

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from fedstrat.sampling import (
    SKETCH_METHODS,
    count_sketch,
    sketch_update,
    stratify_by_sketches,
)

BLOCK = 1 << 16  # the documented block length: d above it exercises the cross-block hash
D_MULTI = 3 * BLOCK + 123


def _structured(d: int, rng: np.random.Generator) -> np.ndarray:
    """Period-64 rows with a sparse profile (like a weight gradient with a few hot inputs), so
    that a fixed ``j mod k`` hash would put almost all the energy in a few buckets."""
    profile = np.zeros(64)
    profile[[3, 17, 40]] = [5.0, -3.0, 2.0]
    rows = -(-d // 64)
    x = (rng.normal(1.0, 0.1, size=(rows, 1)) * profile).reshape(-1)[:d]
    return x + 0.01 * rng.normal(size=d)


def _hash_of(d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket, sign) of every coordinate, read off the sketches of the unit vectors."""
    units = count_sketch(np.eye(d), k, seed)
    nz = units != 0
    assert np.all(nz.sum(axis=1) == 1)  # one bucket per coordinate
    bucket = np.argmax(nz, axis=1)
    sign = units[np.arange(d), bucket]
    assert set(np.unique(sign)) <= {-1.0, 1.0}
    return bucket, sign


def test_count_sketch_is_a_count_sketch():
    rng = np.random.default_rng(0)
    d, k = 1024, 16
    bucket, sign = _hash_of(d, k, seed=3)
    x = rng.normal(size=d)
    expected = np.bincount(bucket, weights=sign * x, minlength=k)
    np.testing.assert_allclose(count_sketch(x, k, 3), expected, rtol=1e-12, atol=1e-12)
    # Balanced within a block: with d = 1024 (one block, a multiple of k) every bucket gets d/k.
    np.testing.assert_array_equal(np.bincount(bucket, minlength=k), d // k)
    # About half the signs are negative (binomial(1024, 1/2): sd 16).
    assert abs(np.sum(sign < 0) - d / 2) < 5 * np.sqrt(d / 4)


def test_collisions_are_random_across_and_within_blocks():
    # Pairs that a fixed fold would always collide: same offset in adjacent blocks, and the same
    # residue mod k in one block. A count sketch collides them with probability <= 1/k.
    k, n_seeds = 64, 300
    pairs = [(5, 5 + BLOCK), (7, 7 + k), (100, 100 + 2 * BLOCK)]
    rows = np.zeros((6, D_MULTI), dtype=np.float32)
    for i, (a, b) in enumerate(pairs):
        rows[2 * i, a] = rows[2 * i + 1, b] = 1.0
    hits = np.zeros(len(pairs))
    for seed in range(n_seeds):
        buckets = np.argmax(count_sketch(rows, k, seed) != 0, axis=1)
        hits += buckets[0::2] == buckets[1::2]
    # Expected n/k = 4.7 collisions per pair (binomial sd 2.2); a fixed fold would give 300.
    assert np.all(hits <= 20), hits


def test_inner_products_and_norms_unbiased_with_bounded_variance():
    # Monte Carlo over seeds (each seed a fresh map). For one draw Var <Sx, Sy> <=
    # 2 ||x||^2 ||y||^2 / k and Var ||Sx||^2 <= 2 ||x||^4 / k, so the mean of n draws has
    # sd <= sqrt(2 / (k n)) ||x|| ||y||; we allow 5 sd.
    rng = np.random.default_rng(1)
    k, n = 32, 300
    x = _structured(D_MULTI, rng)
    y = 0.5 * x + rng.normal(size=D_MULTI)
    sx = np.empty((n, k))
    sy = np.empty((n, k))
    for seed in range(n):
        sx[seed], sy[seed] = count_sketch(np.stack([x, y]), k, seed)
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    sd = np.sqrt(2 / (k * n))
    assert abs(np.mean(np.sum(sx * sy, axis=1)) - x @ y) < 5 * sd * nx * ny
    norms = np.sum(sx**2, axis=1) / nx**2
    assert abs(norms.mean() - 1) < 5 * sd
    # Variance no larger than the Gaussian projection's 2/k (up to the sample variance's own
    # ~8% sd at n = 300). A fixed j mod k fold has ~10x that on this x.
    assert norms.var(ddof=1) < 1.4 * 2 / k, norms.var(ddof=1) * k / 2


def test_deterministic_per_d_k_seed_and_pinned():
    rng = np.random.default_rng(2)
    v = rng.normal(size=D_MULTI)
    s = count_sketch(v, 16, 5)
    np.testing.assert_array_equal(s, count_sketch(v.copy(), 16, 5))
    assert not np.allclose(s, count_sketch(v, 16, 6))
    assert not np.allclose(s[:8], count_sketch(v, 8, 5))
    # Pinned values: another process, or a later version, must build the same map.
    w = np.cos(np.arange(1000) * 0.37)
    pinned = [-0.02320740742716454, -8.693914380652977, -6.197780681464686, 5.340200186329899]
    np.testing.assert_allclose(count_sketch(w, 8, 3)[:4], pinned, rtol=1e-12)
    w2 = np.cos(np.arange(150_000) * 0.37)
    pinned2 = [-46.92615301956274, -0.17942837268608125, -125.76872893051723]
    np.testing.assert_allclose(count_sketch(w2, 8, 3)[:3], pinned2, rtol=1e-10)
    code = (
        "import numpy as np\n"
        "from fedstrat.sampling import count_sketch\n"
        "v = np.random.default_rng(2).normal(size=3 * 65536 + 123)\n"
        "print(count_sketch(v, 16, 5).tobytes().hex())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == s.tobytes().hex()


def test_shapes_dtypes_batch_and_linearity():
    rng = np.random.default_rng(3)
    v, w = rng.normal(size=(2, D_MULTI))
    s = count_sketch(v, 24, 1)
    assert s.shape == (24,) and s.dtype == np.float64
    batch = count_sketch(np.stack([v, w, 2 * v + w]), 24, 1)
    assert batch.shape == (3, 24) and batch.dtype == np.float64
    np.testing.assert_allclose(batch[0], s, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(batch[1], count_sketch(w, 24, 1), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(batch[2], 2 * batch[0] + batch[1], atol=1e-9)
    assert count_sketch(np.zeros((0, 50)), 4).shape == (0, 4)
    # float32 in: float64 out, equal to the float64 sketch of the same numbers up to float32
    # rounding of the partial sums.
    v32 = v.astype(np.float32)
    s32 = count_sketch(v32, 24, 1)
    assert s32.dtype == np.float64
    ref = count_sketch(v32.astype(np.float64), 24, 1)
    assert np.max(np.abs(s32 - ref)) < 1e-5 * np.linalg.norm(v)
    # Integers and lists are converted; a non-contiguous batch is read as is.
    np.testing.assert_allclose(count_sketch([1, 2, 3], 2, 0), count_sketch([1.0, 2.0, 3.0], 2, 0))
    big = rng.normal(size=(D_MULTI, 2)).astype(np.float32)
    np.testing.assert_allclose(
        count_sketch(big.T, 8, 0), count_sketch(np.ascontiguousarray(big.T), 8, 0)
    )


def test_float32_input_is_not_copied():
    d = 2_000_000
    v = np.ones(d, dtype=np.float32)
    count_sketch(v, 64, 0)  # build and cache the map
    tracemalloc.start()
    try:
        count_sketch(v, 64, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A float64 copy of the input would be 16 MB; the work buffers are O(block).
    assert peak < d * 8 / 4, peak


def test_errors():
    v = np.ones(10)
    for bad in (np.array([1.0, np.nan]), np.array([np.inf, 1.0]), np.array([-np.inf])):
        with pytest.raises(ValueError, match="NaN or inf"):
            count_sketch(bad, 4)
    with pytest.raises(ValueError):
        count_sketch(np.array([1.0, np.nan], dtype=np.float32), 4)
    with pytest.raises(ValueError):
        count_sketch(v, 0)
    for bad_shape in (np.zeros(0), np.zeros((2, 0)), np.zeros((2, 2, 2))):
        with pytest.raises(ValueError):
            count_sketch(bad_shape, 4)
    with pytest.raises(ValueError, match="unknown sketch method"):
        sketch_update(v, 4, method="srht")


def test_sketch_update_methods():
    assert SKETCH_METHODS == ("gaussian", "countsketch")
    rng = np.random.default_rng(4)
    v = rng.normal(size=5000)
    np.testing.assert_array_equal(
        sketch_update(v, 16, 2, method="countsketch"), count_sketch(v, 16, 2)
    )
    np.testing.assert_array_equal(
        sketch_update(v, 16, 2), sketch_update(v, 16, 2, method="gaussian")
    )
    # The default is still the Gaussian projection, with the values of the previous version.
    w = np.cos(np.arange(1000) * 0.37)
    pinned = [-4.032106601883177, -9.810974103229215, 5.7458266971415854, 0.0280579364786473]
    np.testing.assert_allclose(sketch_update(w, 8, 3)[:4], pinned, rtol=1e-12)


def test_stratification_on_count_sketches_recovers_clusters():
    # 45 clients in 3 groups of update directions (d = 70k, noise 0.3 of the signal): k-means
    # on 64-dim sketches finds the groups with either method.
    rng = np.random.default_rng(5)
    d, n = 70_000, 45
    centers = rng.normal(size=(3, d))
    truth = np.repeat(np.arange(3), n // 3)
    updates = (centers[truth] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    for method in SKETCH_METHODS:
        sk = sketch_update(updates, 64, 0, method=method)
        labels = stratify_by_sketches(sk, n_strata=3, seed=0).labels
        # Same partition as the truth, up to relabelling.
        pairs = set(zip(truth.tolist(), labels.tolist(), strict=True))
        assert len(pairs) == 3, (method, pairs)
