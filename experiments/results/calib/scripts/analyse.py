# ruff: noqa
"""Decompose the in-run FedAvg prediction error at one dumped round."""
import sys

import numpy as np

from fedstrat.sampling import StratumVarianceTracker
from fedstrat.sampling.baseline import fedavg_factor, fedavg_from_strata

f = np.load(sys.argv[1], allow_pickle=True)
sizes, lab = f["sizes"], f["labels"].astype(int)
p = sizes / sizes.sum()
n, m = len(p), 50
c = fedavg_factor(n, m)
H = lab.max() + 1
P = np.bincount(lab, weights=p, minlength=H)
p2 = np.bincount(lab, weights=p * p, minlength=H)
exact = float(f["fedavg_exact"])
sk_exact = c * float((p * p) @ f["d2s"])
print(f"exact linearised FedAvg (full updates) {exact:.4g}; same on sketches {sk_exact:.4g}"
      f" (sketch/full {sk_exact / exact:.3f})")
for name, dw, d2 in (("full", f["dw"], f["d2"]), ("sketch", f["dws"], f["d2s"])):
    within_exact = c * float((p * p) @ dw)
    sig2 = np.bincount(lab, weights=p * dw, minlength=H) / P  # p-weighted sigma_h^2
    within_approx = c * float(p2 @ sig2)
    btw = c * float((p * p) @ (d2 - dw))
    print(f"[{name}] within exact {within_exact:.4g} approx p2*sigma_p^2 {within_approx:.4g}"
          f" (ratio {within_approx / within_exact:.3f}); between exact {btw:.4g};"
          f" strata-formula total/exact {(within_approx + btw) / (within_exact + btw):.3f}")
tr = f["tracker"][0]
if tr is not None and len(f["pred_fedavg"]):
    t = StratumVarianceTracker.from_state(tr)
    nobs = t.effective_counts()
    wi, bt = fedavg_from_strata(n, m, P, p2, t.stds(), t.means(), nobs)
    sig2 = np.bincount(lab, weights=p * f["dws"], minlength=H) / P
    print("in-run pred", f["pred_fedavg"], "recomputed", wi.sum() + bt.sum(),
          "within", wi.sum(), "between", bt.sum())
    print("tracker sigma^2 / exact current sketch sigma_p^2 per stratum:",
          np.round(t.stds() ** 2 / sig2, 2))
    print("sum p2*tracked / sum p2*exact_sketch", float(p2 @ t.stds() ** 2) / float(p2 @ sig2))
    print("n_eff", np.round(nobs, 1), "counts", t.counts())
    print("pred/exact", f["pred_fedavg"][0] / exact)
# correlation between size and dispersion
dw = f["dw"]
print("corr(log p, log dw)", np.corrcoef(np.log(p), np.log(dw + 1e-30))[0, 1])
k = (p * p) @ dw / (p2.sum()) / ((p @ dw))
print("p^2-weighted mean of dw / p-weighted mean of dw (pooled):", k)
