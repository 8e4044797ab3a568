# ruff: noqa
import sys
import numpy as np
from fedstrat.sampling import StratifiedSampler, Strata, StratumVarianceTracker, predicted_variance
f = np.load(sys.argv[1], allow_pickle=True); M = int(sys.argv[3]) if len(sys.argv) > 3 else 50
sizes, lab, sk = f["sizes"], f["labels"].astype(int), f["sketches"]
p = sizes / sizes.sum(); H = lab.max() + 1
P = np.bincount(lab, weights=p, minlength=H); p2 = np.bincount(lab, weights=p * p, minlength=H)
cnt = np.bincount(lab, minlength=H).astype(float)
from fedstrat.sampling.baseline import fedavg_factor
truth = fedavg_factor(len(p), M) * float((p * p) @ f["d2s"])  # linearised FedAvg on sketches
alloc = f["alloc"].astype(int)
smp = StratifiedSampler(np.rint(sizes).astype(int), Strata(lab), alloc, "pps", seed=1)
rng = np.random.default_rng(0)
out = {"old": [], "sized": []}
for _ in range(int(sys.argv[2])):
    tr = StratumVarianceTracker(H, sk.shape[1])
    for k in range(9):
        sel = smp.sample(rng); tr.decay(0.7)
        for i, w in zip(sel.ids, sel.weights):
            tr.update(lab[i], sk[i], w, size=sizes[i])
    kw = dict(means=tr.means(), m=M, p2=p2, mean_counts=tr.effective_counts())
    for name, sz in (("old", None), ("sized", tr.size_weighted())):
        b = predicted_variance(cnt, P, tr.stds(), alloc, "pps", sized=sz, **kw).fedavg_band
        out[name].append((b.value / truth, b.lo <= truth <= b.hi, truth < b.lo, b.df))
for k, v in out.items():
    v = np.array(v, dtype=float)
    print(f"{k}: ratio mean {v[:,0].mean():.3f} sd {v[:,0].std():.3f}; coverage {v[:,1].mean():.3f} (below band {v[:,2].mean():.3f}); df median {np.median(v[:,3]):.0f}")
