"""Wire constants of fedstrat's Flower messages: the one place record and field names live.

No imports: the server side (:mod:`fedstrat.strategies`, :mod:`fedstrat.app`) and the client side
(:mod:`fedstrat.clients`) both read them from here. See "Flower message protocol" in
docs/design.md.

Profile query (``MessageType.QUERY``):
``RecordDict({PROFILE_KEY: ConfigRecord({PROFILE_EPSILON: float, PROFILE_SEED: int})})``.
Profile reply: ``RecordDict({PROFILE_KEY: MetricRecord({NUM_EXAMPLES: n_i,
PROFILE_LABEL_HIST: [c_1, ..., c_K], PROFILE_PARTITION_ID: int (optional)})})``.

Train / evaluate messages carry ``ARRAYS_KEY`` (ArrayRecord), ``CONFIG_KEY`` (ConfigRecord) and
replies ``METRICS_KEY`` (MetricRecord with ``NUM_EXAMPLES``, the weight Flower's FedAvg reads).
"""

from __future__ import annotations

#: Record name of the profile query (ConfigRecord) and of its reply (MetricRecord).
PROFILE_KEY = "fedstrat-profile"
#: Profile query fields: local-DP epsilon of the label histogram (0 = exact) and its noise seed.
PROFILE_EPSILON = "epsilon"
PROFILE_SEED = "seed"
#: Profile reply fields (besides :data:`NUM_EXAMPLES`).
PROFILE_LABEL_HIST = "label-hist"
PROFILE_PARTITION_ID = "partition-id"

#: Records of train / evaluate messages and replies.
ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
#: Number of local examples n_i: profile replies and train replies (FedAvg's weight key).
NUM_EXAMPLES = "num-examples"
#: Sparse uplink (run option ``sparse-uplink``): a train reply may replace a 2-D+ array ``K`` by
#: ``K + SPARSE_ROWS`` (int64 row indices, sorted) and ``K + SPARSE_VALUES`` (those rows); every
#: other row equals the array the server sent. The server densifies before anything else.
SPARSE_ROWS = "@rows"
SPARSE_VALUES = "@values"
#: Also with ``sparse-uplink``: a float array ``K`` (or ``K@values``) may travel as ``K@xorz``
#: (``K@values@xorz``): uint8, the zlib stream of the byte-planes of its bits XOR the bits of
#: what the server sent (those rows for values). Lossless; the server decodes it first.
SPARSE_XORZ = "@xorz"
