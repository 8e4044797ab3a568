"""The profiling (``MessageType.QUERY``) handler: a node reports its size and label histogram.

Protocol (docs/design.md): the server sends a ConfigRecord under ``"fedstrat-profile"`` with
``epsilon`` (float, 0 or inf = exact) and ``seed``; the node replies
``RecordDict({"fedstrat-profile": MetricRecord({"num-examples": n_i, "label-hist": h_i})})``,
plus ``partition-id`` when the node config has one.

With ``epsilon > 0`` the histogram is released through
``fedstrat.sampling.privatize_histogram(counts, epsilon, rng)`` (an epsilon-DP mechanism for
a count vector; the result is additionally clipped at 0 here), with the RNG seeded by
``(seed, dst_node_id)`` so two nodes never add identical noise. ``num-examples`` is sent
exactly: it is also the aggregation weight of every train reply.

Any ClientApp gets profiling in one line::

    register_profiling(app, lambda context: (label_hist, num_examples))

or, from the node's training data (a torch ``DataLoader``/``Dataset``, a numpy label array, a
pandas column), with :func:`label_profile`::

    register_profiling(app, lambda ctx: label_profile(load_data(ctx)[0], num_classes=10))

The server asks only when it is built with ``StratifiedSelection(..., profiling="query")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedstrat.clients.protocol import ProtocolError, read_number, replies_errors
from fedstrat.wire import (
    NUM_EXAMPLES,
    PROFILE_EPSILON,
    PROFILE_KEY,
    PROFILE_LABEL_HIST,
    PROFILE_PARTITION_ID,
    PROFILE_SEED,
)

ProfileFn = Callable[[Context], tuple[Sequence[float] | np.ndarray, int]]

#: label columns tried, in order, in dict batches and column-oriented datasets
LABEL_KEYS = ("label", "labels", "fine_label", "target", "targets", "y")


def _as_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    elif hasattr(values, "to_numpy"):  # pandas Series / Index
        values = values.to_numpy()
    return np.asarray(values).reshape(-1)


def _pick(record: Any, label_key: str | None) -> Any:
    """The labels of a dict-like batch or column-oriented dataset."""
    keys = (label_key,) if label_key else LABEL_KEYS
    for key in keys:
        try:
            if key in record:
                return record[key]
        except TypeError:
            break
    raise ValueError(f"no label column among {list(keys)}; pass label_key=")


def dataset_labels(source: Any, label_key: str | None = None) -> np.ndarray:
    """Every label of ``source``, without loading the inputs where possible.

    ``source``: labels themselves (numpy array, list, torch tensor, pandas Series), a pandas
    DataFrame (column ``label_key``), a torch ``DataLoader`` (its ``dataset``), a
    ``Subset`` (its indices into the parent), a dataset with ``targets``/``labels``
    (torchvision), a ``TensorDataset`` (last tensor), a column-oriented dataset such as a
    Hugging Face ``Dataset`` (column ``label_key`` or the first of :data:`LABEL_KEYS`), or,
    as a last resort, any iterable of ``(x, y)`` pairs or dict batches (iterated once).
    """
    if isinstance(source, (np.ndarray, list, tuple)) or hasattr(source, "detach"):
        return _as_numpy(source)
    if hasattr(source, "to_numpy") and hasattr(source, "columns"):  # pandas DataFrame
        return _as_numpy(_pick(source, label_key))
    if hasattr(source, "to_numpy"):  # pandas Series
        return _as_numpy(source)
    if hasattr(source, "dataset") and hasattr(source, "batch_size"):  # DataLoader
        try:
            return dataset_labels(source.dataset, label_key)
        except ValueError:
            return _iterate(source, label_key)  # one pass over the batches
    if hasattr(source, "dataset") and hasattr(source, "indices"):  # Subset
        return dataset_labels(source.dataset, label_key)[np.asarray(source.indices)]
    for attr in ("targets", "labels"):
        if hasattr(source, attr) and not callable(getattr(source, attr)):
            return _as_numpy(getattr(source, attr))
    if hasattr(source, "tensors"):  # TensorDataset
        return _as_numpy(source.tensors[-1])
    if hasattr(source, "column_names"):  # Hugging Face Dataset
        cols = list(source.column_names)
        key = label_key or next((k for k in LABEL_KEYS if k in cols), None)
        if key is None or key not in cols:
            raise ValueError(f"no label column among {cols}; pass label_key=")
        return _as_numpy(source[key])
    if isinstance(source, Iterable):
        return _iterate(source, label_key)
    raise ValueError(f"cannot read labels from {type(source).__name__}")


def _iterate(source: Iterable[Any], label_key: str | None) -> np.ndarray:
    """Labels of an iterable of ``(x, y)`` pairs or dict batches."""
    parts = [_as_numpy(_pick(item, label_key) if isinstance(item, dict) else item[1])
             for item in source]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def label_histogram(
    source: Any,
    num_classes: int | None = None,
    classes: Sequence[Any] | None = None,
    label_key: str | None = None,
) -> np.ndarray:
    """Per-class counts ``h_c = #{examples with label c}`` of ``source`` (see
    :func:`dataset_labels`), as a float vector of length ``num_classes`` (labels 0..C-1) or
    ``len(classes)`` (labels are the values in ``classes``, e.g. strings). Every node must use
    the same length, so one of the two is required."""
    labels = dataset_labels(source, label_key)
    if classes is not None:
        index = {c: i for i, c in enumerate(classes)}
        unknown = {v for v in labels.tolist() if v not in index}
        if unknown:
            raise ValueError(f"labels not in classes: {sorted(map(str, unknown))[:5]}")
        codes = np.array([index[v] for v in labels.tolist()], dtype=np.int64)
        size = len(classes)
    elif num_classes is not None:
        codes = labels.astype(np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= num_classes
                           or not np.array_equal(codes, labels)):
            raise ValueError(f"labels must be integers in [0, {num_classes}); got "
                             f"{labels.min()}..{labels.max()}")
        size = int(num_classes)
    else:
        raise ValueError("give num_classes (labels 0..C-1) or classes (the label values)")
    return np.bincount(codes, minlength=size).astype(np.float64)


def label_profile(
    source: Any,
    num_classes: int | None = None,
    classes: Sequence[Any] | None = None,
    label_key: str | None = None,
) -> tuple[np.ndarray, int]:
    """``(label_histogram, num_examples)`` of ``source``: what :func:`register_profiling`'s
    callable returns. ``num_examples`` is the histogram's total."""
    hist = label_histogram(source, num_classes, classes, label_key)
    return hist, int(hist.sum())


def _privatize(counts: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    # Imported lazily: fedstrat.sampling is optional for nodes that only ever get epsilon = 0.
    from fedstrat.sampling import privatize_histogram

    noisy = np.asarray(privatize_histogram(counts, epsilon, rng), dtype=np.float64)
    if noisy.shape != counts.shape:
        raise RuntimeError(
            f"privatize_histogram returned shape {noisy.shape}, expected {counts.shape}"
        )
    return np.clip(noisy, 0.0, None)


def profile_reply(
    message: Message,
    label_hist: Sequence[float] | np.ndarray,
    num_examples: int,
    partition_id: int | None = None,
) -> Message:
    """Answer a ``"fedstrat-profile"`` query with the (possibly privatised) label histogram.

    ``label_hist`` is the vector of per-class counts of the node's training data and
    ``num_examples`` its size n_i. ``partition_id`` (optional) is added to the reply as
    ``partition-id`` so the server can give nodes stable ids. Raises :class:`ProtocolError`
    (a ValueError) on a message without the profile ConfigRecord or with bad values, and
    ``ValueError`` on a bad histogram.
    """
    records = message.content.config_records
    if PROFILE_KEY not in records:
        raise ProtocolError(
            f"query message has no ConfigRecord {PROFILE_KEY!r} (config records present: "
            f"{sorted(records)}); this ClientApp only answers fedstrat profiling queries"
        )
    cfg = records[PROFILE_KEY]
    raw_eps = cfg.get(PROFILE_EPSILON, 0.0)
    # epsilon = inf means "no privacy" like epsilon = 0
    inf = isinstance(raw_eps, float) and math.isinf(raw_eps) and raw_eps > 0
    epsilon = 0.0 if inf else read_number(cfg, PROFILE_EPSILON, 0.0, integer=False)
    seed = read_number(cfg, PROFILE_SEED, 0, integer=True)
    if epsilon < 0:
        raise ProtocolError(f"profile 'epsilon' must be >= 0, got {epsilon}")

    counts = np.asarray(label_hist, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"label_hist must be a non-empty 1-D vector, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("label_hist must contain finite non-negative counts")
    if isinstance(num_examples, bool) or int(num_examples) != num_examples or num_examples < 0:
        raise ValueError(f"num_examples must be a non-negative integer, got {num_examples!r}")

    if epsilon > 0:
        node = int(message.metadata.dst_node_id)
        rng = np.random.default_rng([abs(seed), abs(node)])
        counts = _privatize(counts, epsilon, rng)

    values: dict[str, int | list[float]] = {
        NUM_EXAMPLES: int(num_examples),
        PROFILE_LABEL_HIST: [float(c) for c in counts],
    }
    if partition_id is not None:
        if isinstance(partition_id, bool) or int(partition_id) != partition_id:
            raise ValueError(f"partition_id must be an integer, got {partition_id!r}")
        values[PROFILE_PARTITION_ID] = int(partition_id)
    record = MetricRecord(values)
    return Message(RecordDict({PROFILE_KEY: record}), reply_to=message)


def register_profiling(app: ClientApp, get_profile: ProfileFn, action: str = "default") -> None:
    """Register the fedstrat profiling handler as ``app``'s query handler.

    ``get_profile(context) -> (label_hist, num_examples)`` supplies the node's label counts and
    size; the node config's ``partition-id``, when set, is echoed in the reply. Occupies the
    ``query.<action>`` message type (``"query"`` for the default action); Flower raises
    ``ValueError`` if ``app`` already has one. Failures inside the handler are returned to the
    server as error replies, never raised on the node.
    """
    if not callable(get_profile):
        raise ValueError("get_profile must be a callable context -> (label_hist, num_examples)")

    @replies_errors
    def fedstrat_profile(message: Message, context: Context) -> Message:
        label_hist, num_examples = get_profile(context)
        pid = context.node_config.get("partition-id")
        pid = int(pid) if isinstance(pid, (int, float)) and not isinstance(pid, bool) else None
        return profile_reply(message, label_hist, num_examples, partition_id=pid)

    app.query(action)(fedstrat_profile)
