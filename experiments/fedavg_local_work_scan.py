"""Quick in-process FedAvg scan of the client training knobs on MNIST-5k, MLP, Dirichlet(0.1).

Exploration only (issue 11, rounds to 0.85; experiments/README.md section 3): no Flower, no
stratification. Each round draws 10 of 100 clients uniformly without replacement, trains each
with ``fedstrat.models.train_steps`` and averages the models weighted by client size (FedAvg's
ratio estimator); test accuracy on the 1,000-row test split after every round. The selection
draws are not those of a ``fedstrat simulate`` run, so per-seed numbers differ from Flower's.

    python experiments/fedavg_local_work_scan.py 0.05,5,32 0.05,5,10   # lr,local-epochs,batch

prints, per configuration, for seeds 0-2: (rounds to 0.85, rounds to 0.80, final, best).
~6 s per configuration on one core.
"""

import sys

import numpy as np
import torch

from fedstrat.data import load_dataset, partition_dataset
from fedstrat.models.registry import build_model
from fedstrat.models.train import evaluate, model_to_ndarrays, ndarrays_to_model, train_steps


def run(seed: int, lr: float, epochs: int, bs: int, rounds: int = 30) -> np.ndarray:
    """Test accuracy after each of ``rounds`` FedAvg rounds."""
    ds = load_dataset("mnist5k", seed=seed)
    part = partition_dataset(ds, "dirichlet", 100, alpha=0.1, seed=seed)
    torch.manual_seed(seed)
    model = build_model("mlp", ds)
    rng = np.random.default_rng(seed + 1000)
    g = model_to_ndarrays(model)
    accs = []
    for r in range(1, rounds + 1):
        agg = [np.zeros_like(a) for a in g]
        tot = 0
        for c in rng.choice(100, 10, replace=False):
            ndarrays_to_model(model, g)
            x, y = part.client_data(ds, int(c))
            train_steps(model, x, y, "classification", epochs=epochs, batch_size=bs, lr=lr,
                        seed=seed * 1000 + r * 100 + int(c))
            tot += len(y)
            for a, b in zip(agg, model_to_ndarrays(model), strict=True):
                a += len(y) * b
        g = [a / tot for a in agg]
        ndarrays_to_model(model, g)
        accs.append(evaluate(model, ds.x_test, ds.y_test, "classification")["accuracy"])
    return np.array(accs)


def first(acc: np.ndarray, target: float) -> int | None:
    """First round (1-based) with accuracy >= target, or None."""
    hit = np.nonzero(acc >= target)[0]
    return int(hit[0]) + 1 if len(hit) else None


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    for arg in argv:
        lr_s, ep_s, bs_s = arg.split(",")
        res = []
        for seed in (0, 1, 2):
            a = run(seed, float(lr_s), int(ep_s), int(bs_s))
            final, best = round(float(a[-1]), 3), round(float(a.max()), 3)
            res.append((first(a, 0.85), first(a, 0.80), final, best))
        print(f"lr={lr_s} ep={ep_s} bs={bs_s}:", res, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
