# ruff: noqa
import sys
import numpy as np
from fedstrat.sampling import StratumVarianceTracker, predicted_variance
prefix, last, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tr = None
for r in range(1, last + 1):
    f = np.load(f"{prefix}_r{r}.npz", allow_pickle=True)
    sizes, lab = f["sizes"], f["labels"].astype(int)
    p = sizes / sizes.sum(); H = lab.max() + 1
    if tr is None:
        tr = StratumVarianceTracker(H + 1, 64)
    if len(f["pred_fedavg"]) and tr.counts()[:H].min() >= 3:
        P = np.bincount(lab, weights=p, minlength=H); p2 = np.bincount(lab, weights=p * p, minlength=H)
        cnt = np.bincount(lab, minlength=H).astype(float)
        ex = float(f["fedavg_exact"])
        # structural ratio with exact stats (sketches)
        sig2 = np.bincount(lab, weights=p * f["dws"], minlength=H) / P
        c = ex / float((p * p) @ f["d2"])
        struct = c * float(p2 @ sig2) / (c * float((p * p) @ f["dws"]))
        kw = dict(means=tr.means()[:H], m=m, p2=p2, mean_counts=tr.effective_counts()[:H])
        sw = tr.size_weighted(np.arange(H))
        nob = dict(sw); nob["variances"] = sw["variances"] * (1 - 1 / sw["effective_counts"])
        out = [f"r{r}: exact {ex:.4f} in-run {f['pred_fedavg'][0]:.4f} within-struct {struct:.3f}"]
        for name, sz in (("old", None), ("sized-noBessel", nob), ("sized", sw)):
            b = predicted_variance(cnt, P, tr.stds()[:H], f["alloc"], "pps", sized=sz, **kw).fedavg_band
            out.append(f"{name} {b.value/ex:.3f} [{b.lo/ex:.2f},{b.hi/ex:.2f}]")
        out.append(f"neff med {np.median(tr.effective_counts()[:H]):.1f} sized {np.median(sw['effective_counts']):.1f}")
        print(" | ".join(out))
    tr.decay(0.7)
    for k, i in enumerate(f["ids"]):
        if f["weights"][k] > 0:
            tr.update(lab[i], f["sketches"][i], f["weights"][k], size=sizes[i])
