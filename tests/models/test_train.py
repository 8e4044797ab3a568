"""train_steps / evaluate / ndarray helpers: exact small cases and seeded checks."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from fedstrat.models import (
    ModelSpec,
    build_model,
    evaluate,
    get_device,
    model_keys,
    model_to_ndarrays,
    ndarrays_to_model,
    train_steps,
)
from fedstrat.models.metrics import accuracy, binary_auc, binary_logloss, weighted_mean


def _toy_vision(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=n)
    return x, y


def _toy_ctr(n=64, dims=(5, 4, 3), seed=0):
    rng = np.random.default_rng(seed)
    x = np.stack([rng.integers(0, d, n) for d in dims], axis=1)
    y = (rng.random(n) < 0.4).astype(np.float32)
    return x, y


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _fresh(name="mlp", seed=0):
    torch.manual_seed(seed)
    if name in ("lr", "fm", "deepfm", "dcnv2", "finalmlp"):
        return build_model(name, ModelSpec("ctr", field_dims=(5, 4, 3)))
    return build_model(name, ModelSpec("classification", (1, 8, 8), 3))


@pytest.mark.parametrize("name", ["mlp", "digits-cnn", "finalmlp"])
def test_deterministic_under_seed(name):
    data = _toy_ctr() if name == "finalmlp" else _toy_vision()
    task = "ctr" if name == "finalmlp" else "classification"
    runs = []
    for seed in (7, 7, 8):
        model = _fresh(name)
        if name == "finalmlp":
            model.mlp1.net.append(torch.nn.Dropout(0.3))  # dropout must follow the seed too
        out = train_steps(model, *data, task, epochs=2, batch_size=16, seed=seed)
        runs.append((_params(model), out["loss"]))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not torch.equal(runs[0][0], runs[2][0])


def test_training_does_not_touch_global_rng():
    model = _fresh()
    model.fc1.register_forward_hook(lambda m, i, o: torch.nn.functional.dropout(o, 0.5))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_steps(model, *_toy_vision(), "classification", steps=3, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_step_and_epoch_counts():
    x, y = _toy_vision(n=50)
    assert train_steps(_fresh(), x, y, "classification", epochs=2, batch_size=16)["steps"] == 8
    out = train_steps(_fresh(), x, y, "classification", steps=11, epochs=1, batch_size=16)
    assert out["steps"] == 11 and out["seconds"] >= 0 and math.isfinite(out["loss"])
    empty = train_steps(_fresh(), x[:0], y[:0], "classification")
    assert empty["steps"] == 0 and math.isnan(empty["loss"])


def test_one_sgd_step_with_proximal_term_is_exact():
    """Full batch, SGD: w1 = w0 - lr * (grad L(w0) + mu * (w0 - g))."""
    x, y = _toy_ctr(n=20)
    mu, lr = 0.7, 0.1
    model = _fresh("lr")
    ref = _fresh("lr")
    g = [a + 0.5 for a in model_to_ndarrays(model)]  # global model differs from the start
    w0 = _params(ref)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        ref(torch.as_tensor(x)), torch.as_tensor(y)
    )
    grad = torch.cat([t.flatten() for t in torch.autograd.grad(loss, list(ref.parameters()))])
    gvec = torch.cat([torch.as_tensor(a).flatten() for a in g])
    train_steps(model, x, y, "ctr", steps=1, batch_size=20, lr=lr, proximal_mu=mu, global_params=g)
    expected = w0 - lr * (grad + mu * (w0 - gvec))
    assert torch.allclose(_params(model), expected, atol=1e-6)


def test_proximal_term_keeps_model_near_global():
    x, y = _toy_vision()
    dist = {}
    for mu in (0.0, 1.0, 10.0):
        model = _fresh()
        w0 = _params(model)
        train_steps(model, x, y, "classification", epochs=5, lr=0.05, proximal_mu=mu, seed=1)
        dist[mu] = float((_params(model) - w0).norm())
    assert dist[10.0] < dist[1.0] < dist[0.0]


def test_global_params_forms_and_errors():
    x, y = _toy_vision(n=16)
    m = _fresh()
    by_params = [p.detach().numpy() for p in m.parameters()]
    by_name = dict(zip(model_keys(m), model_to_ndarrays(m), strict=True))
    for g in (by_params, by_name, model_to_ndarrays(m)):
        train_steps(_fresh(), x, y, "classification", steps=1, proximal_mu=1.0, global_params=g)
    with pytest.raises(ValueError, match="global_params has 1 arrays"):
        train_steps(m, x, y, "classification", proximal_mu=1.0, global_params=by_params[:1])
    bad = list(by_params)
    bad[0] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"fc1.weight.*\(2, 2\)"):
        train_steps(m, x, y, "classification", proximal_mu=1.0, global_params=bad)


def test_clipping_bounds_the_step_exactly():
    """With SGD and clip c below the gradient norm, ||w1 - w0|| = lr * c."""
    x, y = _toy_vision(n=32)
    lr, c = 0.1, 1e-3
    model = _fresh()
    w0 = _params(model)
    train_steps(model, x, y, "classification", steps=1, batch_size=32, lr=lr, clip_norm=c)
    assert float((_params(model) - w0).norm()) == pytest.approx(lr * c, rel=1e-4)
    free = _fresh()
    train_steps(free, x, y, "classification", steps=1, batch_size=32, lr=lr)
    assert float((_params(free) - w0).norm()) > 10 * lr * c


def test_adam_and_batchnorm_singleton_batches():
    x, y = _toy_ctr(n=33)
    torch.manual_seed(0)
    model = build_model("deepfm", ModelSpec("ctr", field_dims=(5, 4, 3)), batch_norm=True)
    out = train_steps(model, x, y, "ctr", epochs=1, batch_size=16, optimizer="adam", lr=1e-3)
    assert out["steps"] == 2  # the last batch of one example is skipped under BatchNorm


def test_bad_arguments():
    x, y = _toy_vision(n=8)
    m = _fresh()
    cases = [
        ({"task": "regression"}, "task"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"steps": -1}, "steps"),
        ({"proximal_mu": -1.0}, "proximal_mu"),
    ]
    for kw, match in cases:
        args = {"task": "classification", **kw}
        with pytest.raises(ValueError, match=match):
            train_steps(m, x, y, **args)
    with pytest.raises(ValueError, match="rows"):
        train_steps(m, x, y[:3], "classification")
    with pytest.raises(ValueError, match="task"):
        evaluate(m, x, y, "regression")


def test_evaluate_vision_matches_manual():
    x, y = _toy_vision(n=40)
    m = _fresh()
    out = evaluate(m, x, y, "classification", batch_size=7)
    with torch.no_grad():
        logits = m(torch.as_tensor(x))
    assert out["num_examples"] == 40
    assert out["accuracy"] == pytest.approx(float((logits.argmax(1).numpy() == y).mean()))
    ce = torch.nn.functional.cross_entropy(logits, torch.as_tensor(y))
    assert out["loss"] == pytest.approx(float(ce), rel=1e-5)


def test_evaluate_ctr_and_single_class():
    x, y = _toy_ctr(n=40)
    m = _fresh("fm")
    out = evaluate(m, x, y, "ctr")
    assert set(out) == {"loss", "logloss", "auc", "num_examples"}
    assert 0.0 <= out["auc"] <= 1.0 and out["loss"] == out["logloss"] > 0
    one = evaluate(m, x, np.ones(40, np.float32), "ctr")
    assert math.isnan(one["auc"]) and math.isfinite(one["logloss"])
    empty = evaluate(m, x[:0], y[:0], "ctr")
    assert empty["num_examples"] == 0 and math.isnan(empty["auc"])


def test_metrics_against_enumeration():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 30)
    s = np.round(rng.normal(size=30), 1)  # ties on purpose
    pos, neg = s[y == 1], s[y == 0]
    pairs = [(1.0 if p > q else 0.5 if p == q else 0.0) for p in pos for q in neg]
    assert binary_auc(y, s) == pytest.approx(np.mean(pairs))
    p = rng.uniform(0.05, 0.95, 30)
    assert binary_logloss(y, p) == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert accuracy(np.array([0, 1, 2]), np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1.0]])) == 2 / 3
    assert weighted_mean([1.0, 3.0, float("nan")], [1, 3, 5]) == pytest.approx(2.5)
    assert math.isnan(weighted_mean([float("nan")], [1]))
    with pytest.raises(ValueError, match="shape"):
        binary_auc(y, s[:3])


def test_ndarrays_round_trip_and_mismatch():
    torch.manual_seed(0)
    src = build_model("deepfm", ModelSpec("ctr", field_dims=(5, 4, 3)), batch_norm=True)
    train_steps(src, *_toy_ctr(), "ctr", steps=3)  # moves BatchNorm running stats too
    arrays = model_to_ndarrays(src)
    assert len(arrays) == len(model_keys(src))
    arrays[0][...] += 1  # arrays are copies, not views of the model
    assert not np.array_equal(arrays[0], model_to_ndarrays(src)[0])
    arrays[0][...] -= 1
    torch.manual_seed(1)
    dst = build_model("deepfm", ModelSpec("ctr", field_dims=(5, 4, 3)), batch_norm=True)
    ndarrays_to_model(dst, arrays)
    for a, b in zip(model_to_ndarrays(dst), arrays, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    with pytest.raises(ValueError, match="got 2 arrays"):
        ndarrays_to_model(dst, arrays[:2])
    bad = list(arrays)
    key = model_keys(dst)[0]
    bad[0] = np.zeros((3, 3), np.float32)
    msg = f"{key!r}: array has (3, 3), model expects {tuple(arrays[0].shape)}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        ndarrays_to_model(dst, bad)


def test_get_device():
    assert get_device("cpu") == "cpu"
    assert get_device() in ("cpu", "cuda")
    if not torch.cuda.is_available():
        assert get_device() == "cpu"
        with pytest.raises(ValueError, match="CUDA"):
            get_device("cuda")
    with pytest.raises(ValueError, match="bad device"):
        get_device("tpu9")
