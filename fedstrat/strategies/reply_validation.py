"""Validation of training replies against the global arrays sent in the round."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedstrat.wire import NUM_EXAMPLES

from .array_codec import decode_array
from .sparse_uplink import densify_reply, has_sparse_arrays

#: terminal colour codes (Ray colours its tracebacks)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: longest error reason kept in a log line or record
REASON_CHARS = 300


def error_reason(reason: str) -> str:
    """One line of a node's error reason: without colour codes, the last non-empty line (a
    traceback's exception message; Flower logs the whole traceback itself), at most
    :data:`REASON_CHARS` characters."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(reason)).splitlines() if ln.strip()]
    last = lines[-1].rstrip("'>").strip() if lines else ""
    return last if len(last) <= REASON_CHARS else last[: REASON_CHARS - 3] + "..."


@dataclass
class ValidReply:
    """A training reply that passed :func:`validate_train_reply`, with decoded arrays."""

    node_id: int
    message: Message
    array_key: str
    metric_key: str
    arrays: dict[str, np.ndarray]
    metrics: MetricRecord
    num_examples: float
    extra: dict[str, float] = field(default_factory=dict)


def array_signature(arrays: ArrayRecord) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape, dtype)}`` of an ArrayRecord, read from metadata (no decoding)."""
    return {k: (tuple(map(int, a.shape)), str(a.dtype)) for k, a in arrays.items()}


def compatible_dtype(got: str, expected: str) -> bool:
    """Whether a reply array of dtype ``got`` can stand for a global array of dtype ``expected``.

    Equal dtypes; any two floating-point widths (a float32 model under a server optimiser
    whose arithmetic returns float64 global arrays, e.g. FedAdam); an integer reply for a
    floating global array (an integer buffer such as BatchNorm's ``num_batches_tracked`` that
    the wrapped strategy's weighted average turned into floats). Anything else differs.
    """
    if got == expected:
        return True
    try:
        g, e = np.dtype(got).kind, np.dtype(expected).kind
    except TypeError:
        return False
    return (g == "f" and e == "f") or (g in "iu" and e == "f")


def align_global_dtypes(
    global_np: dict[str, np.ndarray], valid: list[ValidReply]
) -> dict[str, np.ndarray]:
    """The global arrays in the dtypes the clients answered with (first valid reply per key).

    The update of a client is ``x_i - x_g`` with ``x_g`` as the client loaded it (a float32
    model holds ``float32(x_g)``), and an array the clients keep as integers (a counter) stays
    integer, so the rewrite passes it through untouched. Arrays whose dtype already matches
    are returned as they are (no copy).
    """
    if not valid:
        return global_np
    first = valid[0].arrays
    out: dict[str, np.ndarray] = {}
    for key, value in global_np.items():
        want = first[key].dtype if key in first else value.dtype
        out[key] = value if value.dtype == want else value.astype(want)
    return out


def all_finite(value: np.ndarray) -> bool:
    """No NaN or Inf in ``value``: for real floats its min and max (NaN propagates into both;
    two vectorised reductions, no boolean temporary), else ``np.isfinite``."""
    if value.dtype.kind == "f" and value.size:
        return math.isfinite(float(value.min())) and math.isfinite(float(value.max()))
    return bool(np.isfinite(value).all())


def _records(
    content: RecordDict,
) -> tuple[list[tuple[str, ArrayRecord]], list[tuple[str, MetricRecord]]]:
    """The ArrayRecords and the MetricRecords of ``content``, in order, in one pass (Flower's
    ``content.array_records`` / ``metric_records`` build and check a new mapping each time)."""
    arrays: list[tuple[str, ArrayRecord]] = []
    metrics: list[tuple[str, MetricRecord]] = []
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            arrays.append((key, record))
        elif isinstance(record, MetricRecord):
            metrics.append((key, record))
    return arrays, metrics


def nonfinite_reason(key: str) -> str:
    """The rejection reason of a reply whose array ``key`` holds NaN or Inf (one wording for
    the triage and the update scan that takes the check over)."""
    return f"array '{key}' contains NaN or Inf"


def validate_train_reply(
    reply: Message,
    expected: dict[str, tuple[tuple[int, ...], str]],
    selected: set[int],
    num_examples_key: str = NUM_EXAMPLES,
    base: ArrayRecord | None = None,
    check_finite: bool = True,
) -> ValidReply | str:
    """Check one training reply; return the decoded reply or the reason to reject it.

    Rejected: error replies; senders not selected this round; not exactly one ArrayRecord and
    one MetricRecord; a missing, non-scalar, non-finite or non-positive ``num_examples_key``;
    array keys or shapes different from ``expected`` (the global arrays sent), dtypes that are
    not :func:`compatible_dtype`; NaN or Inf in any array. With ``base`` (the global arrays
    sent), a sparse-uplink reply is first densified against it
    (:func:`~fedstrat.strategies.sparse_uplink.densify_reply`); a malformed one is rejected.
    ``check_finite=False``: real floating arrays are not checked for NaN / Inf here (the
    caller's pass over the update does it, :func:`.rewrite.scan_updates`); complex ones are.
    """
    node = int(reply.metadata.src_node_id)
    if reply.has_error():
        return f"error reply from node {node}: {error_reason(reply.error.reason)}"
    if node not in selected:
        return f"node {node} was not selected this round"
    array_records, metric_records = _records(reply.content)
    if len(array_records) != 1:
        return f"expected exactly one ArrayRecord, got {len(array_records)}"
    if len(metric_records) != 1:
        return f"expected exactly one MetricRecord, got {len(metric_records)}"
    array_key, record = array_records[0]
    if base is not None and has_sparse_arrays(record):
        dense = densify_reply(reply, array_key, base)
        if isinstance(dense, str):
            return dense
        reply, record = dense, dense.content[array_key]
    metric_key, metrics = metric_records[0]
    n = metrics.get(num_examples_key)
    if n is None or isinstance(n, list):
        return f"missing or non-scalar metric '{num_examples_key}'"
    if not math.isfinite(float(n)) or float(n) <= 0:
        return f"metric '{num_examples_key}' must be positive and finite, got {n}"
    got = array_signature(record)
    if set(got) != set(expected):
        missing = sorted(set(expected) - set(got))
        unexpected = sorted(set(got) - set(expected))
        return f"array keys differ: missing {missing}, unexpected {unexpected}"
    for key, (shape, dtype) in expected.items():
        if got[key][0] != shape:
            return f"array '{key}' has shape {got[key][0]}, expected {shape}"
        if not compatible_dtype(got[key][1], dtype):
            return f"array '{key}' has dtype {got[key][1]}, expected {dtype}"
    arrays: dict[str, np.ndarray] = {}
    for key, arr in record.items():
        value = decode_array(arr)
        kind = value.dtype.kind
        if (kind == "c" or (kind == "f" and check_finite)) and not all_finite(value):
            return nonfinite_reason(key)
        arrays[key] = value
    return ValidReply(
        node_id=node,
        message=reply,
        array_key=array_key,
        metric_key=metric_key,
        arrays=arrays,
        metrics=metrics,
        num_examples=float(n),
    )
