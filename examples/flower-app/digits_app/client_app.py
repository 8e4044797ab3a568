"""digits-app ClientApp: the plain app (``client_plain.py``) plus fedstrat's one-line profiling
handler, so that a server with ``profiling="query"`` (run config ``mode = "query"``) can
stratify by label histograms from round 1."""

import numpy as np
from flwr.clientapp import ClientApp

from digits_app.client_plain import evaluate_fn, train_fn
from digits_app.task import load_data
from fedstrat.clients import register_profiling

app = ClientApp()
app.train()(train_fn)
app.evaluate()(evaluate_fn)

register_profiling(
    app, lambda ctx: (np.bincount(load_data(ctx)[1], minlength=10), len(load_data(ctx)[1]))
)
