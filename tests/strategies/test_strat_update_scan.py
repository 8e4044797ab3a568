"""The one-pass update scan (peaks, count sketches, HT arrays per reply, no (R, D) matrix): in the
replies' precision (float32 for float32 models), and what the float64 matrix path computes up to
float32 rounding (bit for bit where the arithmetic is float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from fedstrat.sampling import count_sketch
from fedstrat.strategies.array_codec import decode_array
from fedstrat.strategies.local_grid import ensure_task_identity
from fedstrat.strategies.reply_validation import ValidReply
from fedstrat.strategies.rewrite import (
    CHUNK,
    GROUP,
    ScanScratch,
    flat_deltas,
    ht_arrays,
    rewrite_replies,
    scan_updates,
)

SHAPES = {"w": (3, CHUNK + 123), "b": (7,), "n": (2,), "e": (0,)}


def _reply(node: int, arrays: dict[str, np.ndarray]) -> ValidReply:
    ensure_task_identity()
    rec = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    msg = Message(RecordDict({"arrays": rec, "metrics": MetricRecord({"num-examples": 5})}),
                  dst_node_id=node, message_type=MessageType.TRAIN)
    return ValidReply(node, msg, "arrays", "metrics",
                      {k: decode_array(a) for k, a in rec.items()}, MetricRecord(), 5.0)


@pytest.fixture
def case():
    rng = np.random.default_rng(3)
    g = {"w": rng.normal(size=SHAPES["w"]).astype(np.float32),
         "b": rng.normal(size=SHAPES["b"]),  # float64 global
         "n": np.array([3, 4], dtype=np.int64), "e": np.zeros(0, dtype=np.float32)}
    valid = []
    for i in range(4):
        w = g["w"] + rng.normal(scale=10.0 ** -i, size=SHAPES["w"]).astype(np.float32)
        b = (g["b"] + rng.normal(size=7)).astype(np.float32 if i % 2 else np.float64)
        if i == 3:
            b = np.arange(7, dtype=np.int64)  # an integer reply for a floating global array
        valid.append(_reply(i + 1, {"w": w, "b": b, "n": g["n"] + i, "e": g["e"]}))
    return g, valid


def _old_flat_deltas(valid, g):
    keys = [k for k, v in g.items() if v.dtype.kind == "f"]
    gg = np.concatenate([g[k].ravel() for k in keys]).astype(np.float64)
    out = np.empty((len(valid), gg.size))
    for r, v in enumerate(valid):
        out[r] = np.concatenate([v.arrays[k].ravel() for k in keys])
    return out - gg


def _old_ht(valid, g, big_w):
    keys = [k for k, v in g.items() if v.dtype.kind == "f"]
    gg = np.concatenate([g[k].ravel() for k in keys]).astype(np.float64)
    deltas, out = _old_flat_deltas(valid, g), []
    for r, v in enumerate(valid):
        flat, a, new = gg + big_w * deltas[r], 0, {}
        for k in keys:
            new[k] = flat[a:a + g[k].size].reshape(v.arrays[k].shape).astype(v.arrays[k].dtype)
            a += g[k].size
        out.append(new)
    return out


def test_flat_deltas_is_the_concatenated_matrix(case):
    g, valid = case
    assert np.array_equal(flat_deltas(valid, g), _old_flat_deltas(valid, g))


def _work_deltas(valid, g):
    """Rows ``x_i - x_g`` as the scan computes them: float32 for a key whose global and reply
    arrays are all float32 (``w``), float64 otherwise (``b``: a float64 global array)."""
    out = []
    for v in valid:
        w = (v.arrays["w"] - g["w"]).ravel()  # float32 arithmetic
        b = v.arrays["b"].ravel().astype(np.float64) - g["b"].ravel()
        out.append(np.concatenate([w.astype(np.float64), b]))
    return np.stack(out)


def _close_to_float64(got, want64, g, big_w, delta):
    """float32 ``x_g + W Delta`` within its rounding error of the float64 value cast back:
    ``|got - want| <= 4 u |W Delta| + 2 u |want|`` (u = 2^-24, three float32 roundings plus
    the cast of the float64 value)."""
    u = 2.0 ** -24
    err = np.abs(got.astype(np.float64) - want64.astype(np.float64))
    bound = 4 * u * np.abs(big_w * delta) + 2 * u * np.abs(want64.astype(np.float64)) + 1e-30
    return bool(np.all(err <= bound))


def test_scan_works_in_the_replies_precision(case):
    g, valid = case
    rows = _work_deltas(valid, g)
    big_w = 2.75
    scan = scan_updates(valid, g, sketch=(16, 7))
    rewritten = ht_arrays(valid, g, big_w)
    assert scan.keys == ["w", "b", "e"] and scan.d == rows.shape[1]
    assert scan.work == {"w": np.float32, "b": np.float64, "e": np.float32}
    # a float64 key makes the slot sums float64: the sketch of the rows, bit for bit
    assert np.array_equal(scan.sums, count_sketch(rows, 16, 7))
    assert np.array_equal(scan.sketches(valid, g, [2, 0]), count_sketch(rows[[2, 0]], 16, 7))
    exact = _old_flat_deltas(valid, g)
    w_cols = g["w"].size
    for r in range(len(valid)):
        for j, (a, b) in enumerate(((0, w_cols), (w_cols, w_cols + 7))):
            assert scan.amax[r, j] == np.abs(rows[r, a:b]).max()
            assert scan.amax[r, j] == pytest.approx(np.abs(exact[r, a:b]).max(), rel=1e-6)
        assert scan.amax[r, 2] == 0.0  # empty array
    want = _old_ht(valid, g, big_w)
    for r, v in enumerate(valid):
        got = rewritten[r]
        assert list(got) == list(v.arrays)
        w, b = decode_array(got["w"]), decode_array(got["b"])
        assert w.dtype == np.float32 and b.dtype == v.arrays["b"].dtype
        assert _close_to_float64(w, want[r]["w"], g, big_w, exact[r, :w_cols].reshape(w.shape))
        assert np.array_equal(b, want[r]["b"])  # float64 arithmetic: as before, bit for bit
        assert got["n"] is v.message.content["arrays"]["n"]  # integer arrays pass unchanged


def test_float32_scan_is_the_count_sketch_of_float32_updates():
    rng = np.random.default_rng(5)
    g = {"w": rng.normal(size=(2, CHUNK + 9)).astype(np.float32),
         "v": rng.normal(size=33).astype(np.float32)}
    valid = [_reply(i + 1, {k: x + rng.normal(scale=0.1, size=x.shape).astype(np.float32)
                            for k, x in g.items()}) for i in range(3)]
    rows = np.stack([np.concatenate([(v.arrays[k] - g[k]).ravel() for k in g]) for v in valid])
    assert rows.dtype == np.float32
    scan = scan_updates(valid, g, sketch=(8, 1))
    rewritten = ht_arrays(valid, g, 0.5)
    assert scan.sketch.z.dtype == np.float32  # slot sums in the replies' precision
    assert np.array_equal(scan.sketches(valid, g), count_sketch(rows, 8, 1))
    assert np.allclose(scan.sketches(valid, g), count_sketch(rows.astype(np.float64), 8, 1),
                       rtol=1e-5, atol=1e-6)
    exact = _old_flat_deltas(valid, g)
    want = _old_ht(valid, g, 0.5)
    for r in range(3):
        cols = 0
        for k in g:
            got = decode_array(rewritten[r][k])
            delta = exact[r, cols:cols + g[k].size].reshape(got.shape)
            assert _close_to_float64(got, want[r][k], g, 0.5, delta)
            cols += g[k].size


def test_more_replies_than_a_group_scan_as_one():
    """Replies beyond one group of slot accumulators: the same sketches (bit for bit), peaks
    and weighted sums sum_i w_i Delta_i as each reply alone; a NaN reply in a later group is
    marked with its key."""
    rng = np.random.default_rng(8)
    g = {"w": rng.normal(size=(CHUNK + 5,)).astype(np.float32),
         "v": rng.normal(size=(4, 3)).astype(np.float32)}
    n = GROUP + 3
    valid = [_reply(i + 1, {k: x + rng.normal(scale=0.1, size=x.shape).astype(np.float32)
                            for k, x in g.items()}) for i in range(n)]
    bad = {"w": g["w"].copy(), "v": g["v"].copy()}
    bad["v"][1, 2] = np.nan
    valid.append(_reply(n + 1, bad))
    rows = np.stack([np.concatenate([(v.arrays[k] - g[k]).ravel() for k in g]) for v in valid])
    weights = rng.uniform(0.5, 2.0, size=len(valid))
    scan = scan_updates(valid, g, sketch=(8, 3), weights=weights)
    good = list(range(n))
    assert np.array_equal(scan.sums[good], count_sketch(rows[good], 8, 3))
    assert scan.nonfinite == {n: "v"} and math.isinf(scan.amax[n, 1])
    for r in good:
        assert scan.amax[r, 0] == np.abs(rows[r, : g["w"].size]).max()
        assert scan.amax[r, 1] == np.abs(rows[r, g["w"].size :]).max()
    clean = scan_updates(valid[:n], g, weights=weights[:n])
    want = weights[:n] @ rows[:n].astype(np.float64)
    got = np.concatenate([clean.weighted[k].ravel() for k in g])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_a_scratch_reused_across_rounds_of_other_shapes_scans_as_a_fresh_one(case):
    """The caller's work blocks, kept from a larger round and then grown (more replies, longer
    arrays, other dtypes), leave no trace: each scan equals the scan with fresh blocks."""
    g, valid = case
    rng = np.random.default_rng(11)
    small = {"v": rng.normal(size=(5,)).astype(np.float32)}
    many = [_reply(i + 1, {"v": small["v"] + rng.normal(size=5).astype(np.float32)})
            for i in range(GROUP + 2)]
    scratch = ScanScratch()
    for replies, glob in ((many, small), (valid[:2], g), (valid, g), (many[:3], small)):
        w = rng.uniform(0.5, 2.0, size=len(replies))
        got = scan_updates(replies, glob, sketch=(8, 2), weights=w, scratch=scratch)
        want = scan_updates(replies, glob, sketch=(8, 2), weights=w)
        assert np.array_equal(got.sums, want.sums) and np.array_equal(got.amax, want.amax)
        assert got.nonfinite == want.nonfinite
        for k, v in want.weighted.items():
            assert np.array_equal(got.weighted[k], v)


def test_rewrite_replies_ht_paths_agree(case):
    g, valid = case
    w = np.array([0.5, 1.5, 0.25, 2.0])
    scanned = [rewrite_replies(valid, w, g, "ht", "num-examples"),
               rewrite_replies(valid, w, g, "ht", "num-examples",
                               prepared=ht_arrays(valid, g, 4.25))]
    matrix = rewrite_replies(valid, w, g, "ht", "num-examples", flat_deltas(valid, g))
    want = _old_ht(valid, g, 4.25)
    exact = _old_flat_deltas(valid, g)
    for r, msg in enumerate(matrix):  # the float64 matrix path: bit for bit as before
        assert msg.content["metrics"]["num-examples"] == w[r]
        for k in ("w", "b"):
            assert np.array_equal(msg.content["arrays"][k].numpy(), want[r][k])
    for out in scanned:  # the scan's float32 values: within rounding of the float64 ones
        for r, msg in enumerate(out):
            assert msg.content["metrics"]["num-examples"] == w[r]
            x = msg.content["arrays"]["w"].numpy()
            delta = exact[r, :g["w"].size].reshape(x.shape)
            assert _close_to_float64(x, want[r]["w"], g, 4.25, delta)
            assert np.array_equal(msg.content["arrays"]["b"].numpy(), want[r]["b"])
    for a, b in zip(*scanned, strict=True):
        assert a.content["arrays"]["w"].data == b.content["arrays"]["w"].data


def test_scan_marks_a_non_finite_update():
    g = {"w": np.array([1.0, 1e308])}
    big = _reply(1, {"w": np.array([1.0, -1e308])})  # x - g overflows float64
    scan = scan_updates([big], g)
    assert math.isinf(scan.amax[0, 0])
    assert scan_updates([], g) is None and scan_updates([big], {"n": np.zeros(2, int)}) is None


def test_a_float32_overflow_is_measured_in_float64():
    g = {"w": np.array([1.0, 3e38], dtype=np.float32)}
    big = _reply(1, {"w": np.array([1.0, -3e38], dtype=np.float32)})  # float32 x - g = -inf
    scan = scan_updates([big], g)
    assert scan.amax[0, 0] == pytest.approx(6e38, rel=1e-6)


def test_overflowing_float32_slot_sums_are_sketched_again_in_float64():
    d = 4 * 65536  # four coordinates per slot of the sketch
    g = {"w": np.zeros(d, dtype=np.float32)}
    big = _reply(1, {"w": np.full(d, 3e38, dtype=np.float32)})
    scan = scan_updates([big], g, sketch=(4, 0))
    with np.errstate(all="ignore"):
        assert not np.all(np.isfinite(scan.sums))  # float32 slot sums overflow
    got = scan.sketches([big], g)
    assert np.all(np.isfinite(got))
    want = count_sketch(np.full(d, np.float32(3e38), dtype=np.float64), 4, 0)
    assert np.array_equal(got[0], want)


def test_screened_ht_arrays_use_the_kept_replies_weight():
    """A reply the screen rejects leaves the HT arrays of the others with W of the kept ones."""
    from flwr.app import ConfigRecord
    from flwr.serverapp.strategy import FedAvg
    from strathelpers import global_arrays, make_population, population_grid, train_reply

    from fedstrat.strategies import StratifiedSelection
    from fedstrat.strategies.reply_screen import screen_triage
    from fedstrat.strategies.triage import reply_weights, triage_replies

    overrides = {}
    pop = make_population(n=12, classes=3, dim=6, seed=2)
    grid = population_grid(pop, overrides=overrides)
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=6, seed=1,
                            profiling="query", design="srswor")  # HT weights, W != 1
    arrays = global_arrays(6, dtype=np.float32)
    msgs = list(s.configure_train(1, arrays, ConfigRecord(), grid))
    plan = s.pending_plan
    bad = plan.selected[1]

    def huge(msg, new):
        new = {k: np.asarray(v).copy() for k, v in new.items()}
        new["w"] = new["w"].astype(np.float32)
        new["w"][0] = 3e38  # finite, but W x 3e38 overflows float32
        return train_reply(msg, new, {"num-examples": 10, "train-loss": 1.0})

    overrides[bad] = huge
    triage = triage_replies(list(grid.send_and_receive(msgs)), plan, "num-examples")
    g = {k: decode_array(a) for k, a in arrays.items()}
    big_w_all = float(reply_weights(plan, triage.valid)[0].sum())
    out, screened = screen_triage(plan, triage, g, sketch=(8, 0), matrix=False, rewrite=True)
    assert [p.node for p in out.rejected] == [bad] and bad not in [v.node_id for v in out.valid]
    big_w = float(screened.weights.sum())
    assert abs(big_w - big_w_all) > 1e-3 and len(screened.rewritten) == len(out.valid)
    assert screened.sketches.shape == (len(out.valid), 8)
    for v, new in zip(out.valid, screened.rewritten, strict=True):
        for k, x in v.arrays.items():
            delta = x.astype(np.float64) - g[k]
            want = (g[k] + big_w * delta).astype(np.float32)
            assert _close_to_float64(new[k].numpy(), want, g, big_w, delta)


def test_ht_arrays_are_the_three_step_values_exactly():
    """``x_g + W (x_i - x_g)`` as subtract, multiply, add in the work dtype, over a key longer
    than a scan step (the values are computed step by step) and one of mixed widths."""
    rng = np.random.default_rng(8)
    g = {"w": rng.normal(size=(3, CHUNK + 5)).astype(np.float32),
         "b": rng.normal(size=11)}  # float64 global, float32 replies: work in float64
    valid = [_reply(i + 1, {k: (x + rng.normal(size=x.shape)).astype(np.float32)
                            for k, x in g.items()}) for i in range(2)]
    rewritten = ht_arrays(valid, g, 1.75)
    for r, v in enumerate(valid):
        for k, x in v.arrays.items():
            work = np.result_type(np.float32, x.dtype, g[k].dtype)
            y = np.subtract(x, g[k], dtype=work)
            y *= 1.75
            want = np.add(y, g[k], dtype=work).astype(x.dtype)
            got = decode_array(rewritten[r][k])
            assert got.dtype == x.dtype and got.shape == x.shape
            assert np.array_equal(got, want), k
