"""The one-pass update scan (peaks, count sketches, HT arrays per reply, no (R, D) matrix) is
bit for bit what the matrix path computes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from fedstrat.sampling import count_sketch
from fedstrat.strategies.array_codec import decode_array
from fedstrat.strategies.local_grid import ensure_task_identity
from fedstrat.strategies.reply_validation import ValidReply
from fedstrat.strategies.rewrite import CHUNK, flat_deltas, rewrite_replies, scan_updates

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


def test_scan_matches_the_matrix_bit_for_bit(case):
    g, valid = case
    deltas = _old_flat_deltas(valid, g)
    big_w = 2.75
    scan = scan_updates(valid, g, sketch=(16, 7), rewrite_w=big_w)
    assert scan.keys == ["w", "b", "e"] and scan.d == deltas.shape[1]
    assert np.array_equal(scan.sketch.result(), count_sketch(deltas, 16, 7))
    assert np.array_equal(scan.sketch.result([2, 0]), count_sketch(deltas[[2, 0]], 16, 7))
    w_cols = g["w"].size
    for r in range(len(valid)):
        for j, (a, b) in enumerate(((0, w_cols), (w_cols, w_cols + 7))):
            assert scan.amax[r, j] == np.abs(deltas[r, a:b]).max()
        assert scan.amax[r, 2] == 0.0  # empty array
    want = _old_ht(valid, g, big_w)
    for r, v in enumerate(valid):
        got = scan.rewritten[r]
        assert list(got) == list(v.arrays)
        for k in ("w", "b"):
            x = decode_array(got[k])
            assert x.dtype == v.arrays[k].dtype and np.array_equal(x, want[r][k])
        assert got["n"] is v.message.content["arrays"]["n"]  # integer arrays pass unchanged


def test_rewrite_replies_ht_paths_agree(case):
    g, valid = case
    w = np.array([0.5, 1.5, 0.25, 2.0])
    ways = [rewrite_replies(valid, w, g, "ht", "num-examples"),
            rewrite_replies(valid, w, g, "ht", "num-examples", flat_deltas(valid, g)),
            rewrite_replies(valid, w, g, "ht", "num-examples",
                            prepared=scan_updates(valid, g, rewrite_w=4.25).rewritten)]
    want = _old_ht(valid, g, 4.25)
    for out in ways:
        for r, msg in enumerate(out):
            assert msg.content["metrics"]["num-examples"] == w[r]
            for k in ("w", "b"):
                assert np.array_equal(msg.content["arrays"][k].numpy(), want[r][k])


def test_scan_marks_a_non_finite_update():
    g = {"w": np.array([1.0, 1e308])}
    big = _reply(1, {"w": np.array([1.0, -1e308])})  # x - g overflows float64
    scan = scan_updates([big], g)
    assert math.isinf(scan.amax[0, 0])
    assert scan_updates([], g) is None and scan_updates([big], {"n": np.zeros(2, int)}) is None
