"""Sparse uplink: clients send changed table rows, the server densifies them exactly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.app import Message as FlwrMessage

from fedstrat.app.config import RunConfig
from fedstrat.app.server_app import run_server
from fedstrat.clients.client_app import app as client_app
from fedstrat.clients.data import clear_cache
from fedstrat.clients.uplink import record_bytes, sparse_arrays, xor_compress
from fedstrat.data.base import package_dir
from fedstrat.strategies import LocalGrid
from fedstrat.strategies.local_grid import client_app_handler
from fedstrat.strategies.reply_validation import array_signature, validate_train_reply
from fedstrat.strategies.sparse_uplink import (
    densify,
    densify_array,
    has_sparse_arrays,
    xor_decompress,
)
from fedstrat.wire import SPARSE_ROWS, SPARSE_VALUES, SPARSE_XORZ


def _records(seed: int = 0) -> tuple[ArrayRecord, ArrayRecord, dict[str, np.ndarray]]:
    """(sent, dense reply): a table with 3 of 200 rows changed, a dense matrix, a bias."""
    rng = np.random.default_rng(seed)
    sent = {
        "emb": rng.normal(size=(200, 8)).astype(np.float32),
        "w": rng.normal(size=(4, 8)).astype(np.float32),
        "b": rng.normal(size=(4,)).astype(np.float32),
    }
    new = {k: v.copy() for k, v in sent.items()}
    new["emb"][[3, 50, 199]] += 1.0
    new["w"] += 0.5
    new["b"] += 0.5
    return (
        ArrayRecord({k: Array(v) for k, v in sent.items()}),
        ArrayRecord({k: Array(v) for k, v in new.items()}),
        new,
    )


def test_only_changed_rows_of_tables_travel_and_densify_is_exact():
    sent, reply, new = _records()
    sparse = sparse_arrays(reply, sent)
    assert [k.removesuffix(SPARSE_XORZ) for k in sparse] == [
        "emb" + SPARSE_ROWS, "emb" + SPARSE_VALUES, "w", "b",
    ]  # fmt: skip
    assert sparse["emb" + SPARSE_ROWS].numpy().tolist() == [3, 50, 199]
    assert record_bytes(sparse) < record_bytes(reply) / 5
    dense = densify(sparse, sent)
    assert not isinstance(dense, str) and list(dense.keys()) == ["emb", "w", "b"]
    for k, v in new.items():
        assert np.array_equal(dense[k].numpy(), v) and dense[k].numpy().dtype == v.dtype


def test_dense_is_kept_when_sparse_would_not_be_smaller():
    sent, _, _ = _records()
    everything = ArrayRecord({k: Array(a.numpy() + 1) for k, a in sent.items()})
    assert not any(k.endswith(SPARSE_ROWS) for k in sparse_arrays(everything, sent))
    noise = np.random.default_rng(1).integers(0, 2**32, size=(200, 8), dtype=np.uint32)
    random_bits = ArrayRecord({"emb": Array(noise.view(np.float32))})
    assert not has_sparse_arrays(sparse_arrays(random_bits, ArrayRecord({"emb": sent["emb"]})))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_changed_bits_compress_and_decode_bit_for_bit(dtype):
    rng = np.random.default_rng(2)
    sent = (0.1 * rng.normal(size=(64, 128))).astype(dtype)
    new = (sent + 0.003 * rng.normal(size=sent.shape)).astype(dtype)
    new[0, :3] = [np.nan, np.inf, -0.0]  # any bits travel, the server's checks come later
    payload = xor_compress(new, sent)
    assert payload is not None and payload.dtype == np.uint8 and payload.nbytes < new.nbytes
    back = xor_decompress(payload, sent)
    assert back.dtype == new.dtype and back.shape == new.shape
    assert back.tobytes() == new.tobytes()
    assert xor_compress(new.astype(np.float32 if dtype != np.float32 else np.float64), sent) is None


def test_compressed_values_and_dense_arrays_densify_exactly():
    rng = np.random.default_rng(3)
    sent = {"emb": rng.normal(size=(300, 16)).astype(np.float32),
            "mlp": (0.1 * rng.normal(size=(64, 128))).astype(np.float32)}  # fmt: skip
    new = {k: v.copy() for k, v in sent.items()}
    new["emb"][[7, 8, 250]] += (0.01 * rng.normal(size=(3, 16))).astype(np.float32)
    new["mlp"][4:] += (0.003 * rng.normal(size=(60, 128))).astype(np.float32)  # 4 dead units
    s_rec = ArrayRecord({k: Array(v) for k, v in sent.items()})
    sparse = sparse_arrays(ArrayRecord({k: Array(v) for k, v in new.items()}), s_rec)
    assert list(sparse.keys()) == [
        "emb" + SPARSE_ROWS, "emb" + SPARSE_VALUES + SPARSE_XORZ, "mlp" + SPARSE_XORZ,
    ]  # fmt: skip
    assert len(sparse["mlp" + SPARSE_XORZ].data) < 0.8 * new["mlp"].nbytes
    dense = densify(sparse, s_rec)
    assert not isinstance(dense, str) and list(dense.keys()) == ["emb", "mlp"]
    for k, v in new.items():
        assert dense[k].numpy().tobytes() == v.tobytes()


def test_malformed_compressed_arrays_are_refused():
    import zlib

    sent = np.zeros((10, 4), np.float32)
    base = ArrayRecord({"w": Array(sent)})
    good = xor_compress(sent + 0.5, sent)
    bomb = np.frombuffer(zlib.compress(bytes(10**6)), dtype=np.uint8)
    cases = {
        "payload must be": ArrayRecord({"w" + SPARSE_XORZ: Array(good.astype(np.int16))}),
        "Error": ArrayRecord({"w" + SPARSE_XORZ: Array(np.arange(50, dtype=np.uint8))}),
        "expected 160": ArrayRecord({"w" + SPARSE_XORZ: Array(bomb)}),
        "both plain and compressed": ArrayRecord(
            {"w": Array(sent), "w" + SPARSE_XORZ: Array(good)}
        ),
        "not one of the arrays sent": ArrayRecord({"v" + SPARSE_XORZ: Array(good)}),
        "values without rows": ArrayRecord({"w" + SPARSE_VALUES + SPARSE_XORZ: Array(good)}),
        "out of range": ArrayRecord(
            {
                "w" + SPARSE_ROWS: Array(np.array([10], np.int64)),
                "w" + SPARSE_VALUES + SPARSE_XORZ: Array(good),
            }
        ),  # fmt: skip
    }
    for match, record in cases.items():
        result = densify(record, base)
        assert isinstance(result, str) and match in result, (match, result)
    assert not isinstance(densify(ArrayRecord({"w" + SPARSE_XORZ: Array(good)}), base), str)


@pytest.mark.parametrize(
    ("rows", "values", "match"),
    [
        ([5, 3], np.zeros((2, 8), np.float32), "sorted"),
        ([3, 3], np.zeros((2, 8), np.float32), "sorted"),
        ([200], np.zeros((1, 8), np.float32), "out of range"),
        ([-1], np.zeros((1, 8), np.float32), "out of range"),
        ([1, 2], np.zeros((2, 7), np.float32), "do not fit"),
    ],
)
def test_malformed_pairs_are_refused(rows, values, match):
    base = np.zeros((200, 8), np.float32)
    result = densify_array(base, np.asarray(rows, np.int64), values, "emb")
    assert isinstance(result, str) and match in result


def _reply(record: ArrayRecord, node: int = 7) -> FlwrMessage:
    content = RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": 10})})
    msg = FlwrMessage(content, dst_node_id=node, message_type="train")
    return FlwrMessage(content, reply_to=msg)


def test_validation_densifies_against_the_arrays_sent_and_rejects_orphans():
    sent, reply, new = _records()
    sparse = sparse_arrays(reply, sent)
    sig = array_signature(sent)
    msg = _reply(sparse)
    node = int(msg.metadata.src_node_id)
    ok = validate_train_reply(msg, sig, {node}, base=sent)
    assert not isinstance(ok, str)
    assert np.array_equal(ok.arrays["emb"], new["emb"])
    assert not has_sparse_arrays(ok.message.content["arrays"])  # what the rewrite copies
    assert isinstance(validate_train_reply(msg, sig, {node}), str)  # no base: keys differ
    orphan = ArrayRecord({k: v for k, v in sparse.items() if not k.endswith(SPARSE_ROWS)})
    bad = validate_train_reply(_reply(orphan), sig, {node}, base=sent)
    assert isinstance(bad, str) and "values without rows" in bad


needs_recbole = pytest.mark.skipif(package_dir("recbole") is None, reason="recbole not installed")


def _grid(cfg: RunConfig, sizes: list[int]) -> LocalGrid:
    ids = list(range(501, 501 + cfg.num_clients))

    def count(msg: FlwrMessage, reply: FlwrMessage) -> None:
        if msg.metadata.message_type.startswith("train") and not reply.has_error():
            sizes.append(record_bytes(reply.content["arrays"]))

    return LocalGrid(ids, client_app_handler(client_app, ids, cfg.to_flower(), count))


@pytest.mark.ctr
@needs_recbole
def test_sparse_run_equals_dense_run_with_fewer_bytes(tmp_path: Path):
    """Two rounds of per-user-group MovieLens (FM: embedding tables only) with and without the
    sparse uplink: the same AUC and logloss bit for bit, >= 5x fewer uplink bytes."""
    base = RunConfig(
        dataset="movielens-100k", split="temporal", model="fm", partition="natural",
        num_clients=50, clients_per_round=5, rounds=2, local_steps=2, batch_size=32,
        optimizer="adam", lr=0.01, seed=1, node_wait_timeout=5.0, round_timeout=60.0,
    )  # fmt: skip
    metrics, sizes = {}, {}
    for sparse in (False, True):
        cfg = dataclasses.replace(base, sparse_uplink=sparse, out=str(tmp_path / str(sparse)))
        clear_cache()
        sizes[sparse] = []
        run_server(_grid(cfg, sizes[sparse]), cfg.validate())
        rows = [json.loads(s) for s in (tmp_path / str(sparse) / "progress.jsonl").open()]
        metrics[sparse] = [(r["auc"], r["logloss"]) for r in rows if r.get("event") == "round"]
    assert metrics[True] == metrics[False] and len(metrics[True]) == 2
    assert len(sizes[True]) == len(sizes[False]) == 10
    assert sum(sizes[False]) >= 5 * sum(sizes[True])
