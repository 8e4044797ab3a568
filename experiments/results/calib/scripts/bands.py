# ruff: noqa
import numpy as np, sys
from fedstrat.sampling import StratumVarianceTracker, predicted_variance
# measured MC / linearised exact at the measured rounds (from measure-variance rows): ML s0 r10 0.3429/0.3515; MNIST s0 r5 0.1152/0.1247, r10 0.07154/0.07651
for prefix, last, m, first in (("/tmp/calib/ml_s0", 9, 50, 4), ("/tmp/calib/mn_s0", 10, 10, 4)):
    tr = None; cov = []
    for r in range(1, last + 1):
        f = np.load(f"{prefix}_r{r}.npz", allow_pickle=True)
        sizes, lab = f["sizes"], f["labels"].astype(int)
        p = sizes / sizes.sum(); H = lab.max() + 1
        if tr is None: tr = StratumVarianceTracker(H + 1, 64)
        if r >= first and tr.counts()[:H].min() >= 3:
            P = np.bincount(lab, weights=p, minlength=H); p2 = np.bincount(lab, weights=p * p, minlength=H)
            cnt = np.bincount(lab, minlength=H).astype(float); ex = float(f["fedavg_exact"])
            kw = dict(means=tr.means()[:H], m=m, p2=p2, mean_counts=tr.effective_counts()[:H])
            n = predicted_variance(cnt, P, tr.stds()[:H], f["alloc"], "pps", sized=tr.size_weighted(np.arange(H)), **kw)
            b = n.fedavg_band; cov.append(b.lo <= ex <= b.hi)
            print(prefix[-5:], r, f"new {n.fedavg/ex:.3f} [{b.lo/ex:.2f},{b.hi/ex:.2f}] glow {n.gain_lower():.4f} strat {n.stratified:.4f}")
        tr.decay(0.7)
        for k, i in enumerate(f["ids"]):
            if f["weights"][k] > 0: tr.update(lab[i], f["sketches"][i], f["weights"][k], size=sizes[i])
    print("covered", sum(cov), "/", len(cov))
