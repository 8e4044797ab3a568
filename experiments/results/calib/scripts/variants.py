# ruff: noqa
import sys
import numpy as np
from fedstrat.sampling import StratumVarianceTracker
from fedstrat.sampling.fedavg_sized import fedavg_terms
prefix, last, m, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tr = None; rows = []
for r in range(1, last + 1):
    f = np.load(f"{prefix}_r{r}.npz", allow_pickle=True)
    sizes, lab = f["sizes"], f["labels"].astype(int)
    p = sizes / sizes.sum(); H = lab.max() + 1; n = len(p)
    if tr is None:
        tr = StratumVarianceTracker(H + 1, 64)
    if r >= first and tr.counts()[:H].min() >= 3:
        P = np.bincount(lab, weights=p, minlength=H); p2 = np.bincount(lab, weights=p * p, minlength=H)
        ex = float(f["fedavg_exact"]); ne = tr.effective_counts()[:H]
        sw = tr.size_weighted(np.arange(H))
        nob = dict(sw); nob["variances"] = sw["variances"] * (1 - 1 / sw["effective_counts"])
        out = {}
        w0, b0, _, _ = fedavg_terms(n, m, P, p2, tr.stds()[:H], tr.means()[:H], ne, None)
        out["A old"] = w0.sum() + b0.sum()
        for name, sz in (("B sized+bessel", sw), ("C sized", nob)):
            w, b, _, _ = fedavg_terms(n, m, P, p2, tr.stds()[:H], tr.means()[:H], ne, sz)
            out[name] = w.sum() + b.sum()
            out[name[0].replace("B", "D").replace("C", "E") + " within-only" + name[7:]] = w.sum() + b0.sum()
        rows.append({k: v / ex for k, v in out.items()})
        print(f"r{r} " + " ".join(f"{k}={v/ex:.3f}" for k, v in out.items()))
    tr.decay(0.7)
    for k, i in enumerate(f["ids"]):
        if f["weights"][k] > 0:
            tr.update(lab[i], f["sketches"][i], f["weights"][k], size=sizes[i])
print("mean", {k: round(float(np.mean([r[k] for r in rows])), 3) for k in rows[0]})
