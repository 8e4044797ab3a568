# ruff: noqa
"""Diagnostic dump: replay the strategy (RunReplay) along the measured trajectory and save,
per round, exact quantities behind the in-run FedAvg prediction."""
import copy
import sys

import numpy as np

from fedstrat.app.config import RunConfig
from fedstrat.measure.tracking import RunReplay
from fedstrat.measure.updates import compute_client_updates
from fedstrat.sampling import sketch_update
from fedstrat.sampling.baseline import fedavg_variance

cfg_path, seed, last, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cfg = RunConfig.from_toml(cfg_path)
cfg = RunConfig.from_mapping({"seed": seed}, base=cfg)
rounds = list(range(1, last + 1))
rep = RunReplay(cfg, rounds)
o = rep.options
pre = {}


def hook(r, updates, result):
    pol = rep.policy
    orig = pol.observe

    def obs(fb):
        tr = pol.stratifier.tracker_
        pre["tracker"] = None if tr is None else copy.deepcopy(tr.state_dict())
        pre["ids"] = np.asarray(fb.nodes)
        pre["weights"] = np.asarray(fb.weights)
        orig(fb)

    pol.observe = obs
    rep(r, updates, result)
    pol.observe = orig
    sizes = np.asarray(result["sizes"], dtype=np.float64)
    p = sizes / sizes.sum()
    upd = np.asarray(updates, dtype=np.float64)
    sk = sketch_update(upd, o.sketch_dim, o.sketch_seed, method=o.sketch_method)
    m = cfg.clients_per_round
    t = p @ upd
    d2 = np.einsum("ij,ij->i", upd - t, upd - t)
    ts = p @ sk
    d2s = np.einsum("ij,ij->i", sk - ts, sk - ts)
    sp = pol.last_plan
    labels = None if sp is None else np.asarray(sp.strata.labels)
    pr = rep.predictions.get(r)
    # exact within-stratum squared deviations around the p-weighted stratum mean
    dw = dws = None
    if labels is not None:
        dw = np.zeros(len(p))
        dws = np.zeros(len(p))
        for h in np.unique(labels):
            mem = labels == h
            q = p[mem] / p[mem].sum()
            mu = q @ upd[mem]
            dw[mem] = np.einsum("ij,ij->i", upd[mem] - mu, upd[mem] - mu)
            mus = q @ sk[mem]
            dws[mem] = np.einsum("ij,ij->i", sk[mem] - mus, sk[mem] - mus)
    np.savez(
        f"{out}_r{r}.npz", sizes=sizes, sketches=sk, d2=d2, d2s=d2s,
        fedavg_exact=fedavg_variance(upd, sizes, m), labels=labels if labels is not None else [],
        dw=dw if dw is not None else [], dws=dws if dws is not None else [],
        ids=pre.get("ids"), weights=pre.get("weights"),
        pred_fedavg=np.asarray(pr.predicted_fedavg if pr and pr.predicted_fedavg else []),
        pred_strat=np.asarray(pr.predicted if pr and pr.predicted else []),
        alloc=np.asarray(pr.allocation if pr is not None and pr.allocation is not None else []),
        design=str(pr.design if pr else None), mode=str(pr.mode if pr else None),
        tracker=np.asarray([pre.get("tracker")], dtype=object),
    )
    print(r, "exact", fedavg_variance(upd, sizes, m), "pred",
          None if pr is None else pr.predicted_fedavg, flush=True)


compute_client_updates(cfg, rounds, on_progress=lambda s: print(s, flush=True), on_updates=hook)
