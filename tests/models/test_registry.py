"""Registry, specs built from duck-typed metadata, and every model's forward/backward."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedstrat.models import (
    ModelSpec,
    build_model,
    default_model_for,
    list_models,
    model_task,
    register_model,
    to_spec,
)

VISION = {
    "mlp": (1, 28, 28),
    "cnn": (1, 28, 28),
    "cnn-cifar": (3, 32, 32),
    "digits-cnn": (1, 8, 8),
}
CTR = ["lr", "fm", "deepfm", "dcnv2", "finalmlp"]
FIELD_DIMS = (7, 11, 3, 2)


def test_list_models_has_all_names():
    assert set(list_models()) == set(VISION) | set(CTR)
    assert set(list_models("ctr")) == set(CTR)
    assert set(list_models("classification")) == set(VISION)


def _check_backward(model: torch.nn.Module, out: torch.Tensor) -> None:
    out.float().pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", sorted(VISION))
def test_vision_forward_backward(name):
    torch.manual_seed(0)
    shape = VISION[name]
    model = build_model(name, ModelSpec("classification", shape, num_classes=10))
    x = torch.randn(5, *shape)
    out = model(x)
    assert out.shape == (5, 10)
    # flat input of the same size is accepted as well
    assert torch.allclose(model(x.flatten(1)), out)
    _check_backward(model, out)


@pytest.mark.parametrize("name", CTR)
def test_ctr_forward_backward(name):
    torch.manual_seed(0)
    model = build_model(name, ModelSpec("ctr", field_dims=FIELD_DIMS))
    x = torch.stack([torch.randint(0, d, (6,)) for d in FIELD_DIMS], dim=1)
    out = model(x)
    assert out.shape == (6,)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out, torch.ones(6))
    model.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("deepfm", {"embedding_dim": 4, "hidden_units": (8,), "batch_norm": True, "dropout": 0.1}),
        ("dcnv2", {"structure": "stacked", "num_cross_layers": 1}),
        ("finalmlp", {"num_heads": 2, "fs1_context": [0], "fs2_context": [1, 2]}),
        ("finalmlp", {"feature_selection": False}),
    ],
)
def test_ctr_model_options(name, kwargs):
    model = build_model(name, ModelSpec("ctr", field_dims=FIELD_DIMS), **kwargs)
    x = torch.zeros(4, len(FIELD_DIMS), dtype=torch.long)
    assert model(x).shape == (4,)


def test_dataset_like_objects_work_directly():
    vis = SimpleNamespace(
        task="classification", x=np.zeros((3, 1, 8, 8), np.float32), num_classes=10, field_dims=None
    )
    assert build_model("digits-cnn", vis)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    ctr = SimpleNamespace(
        task="ctr", x=np.zeros((3, 2), np.int64), num_classes=2, field_dims=[4, 5]
    )
    assert to_spec(ctr) == ModelSpec("ctr", (2,), 2, (4, 5))
    assert build_model("fm", ctr)(torch.zeros(2, 2, dtype=torch.long)).shape == (2,)
    meta = SimpleNamespace(task="classification", input_shape=(784,), num_classes=10)
    assert build_model("cnn", meta)(torch.zeros(2, 784)).shape == (2, 10)


def test_registry_errors():
    spec = ModelSpec("classification", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet", spec)
    with pytest.raises(ValueError, match="ctr model but the data task is 'classification'"):
        build_model("deepfm", spec)
    with pytest.raises(ValueError, match="classification model but the data task is 'ctr'"):
        build_model("mlp", ModelSpec("ctr", field_dims=(3,)))
    with pytest.raises(ValueError, match="too small"):
        build_model("cnn", ModelSpec("classification", (1, 8, 8), 10))
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp", task="classification")(lambda spec: None)
    with pytest.raises(ValueError, match="task"):
        register_model("x", task="regression")
    with pytest.raises(ValueError, match="no 'task'"):
        build_model("mlp", object())
    with pytest.raises(ValueError, match="field_dims"):
        ModelSpec("ctr")
    with pytest.raises(ValueError, match="input_shape"):
        ModelSpec("classification", (), 10)
    with pytest.raises(ValueError, match="task"):
        ModelSpec("regression", (3,), 2)
    with pytest.raises(ValueError, match="unknown model"):
        model_task("nope")


def test_default_model_for():
    assert default_model_for("mnist5k") == "mlp"
    assert default_model_for("digits") == "digits-cnn"
    assert default_model_for("mnist") == "cnn"
    assert default_model_for("fashion-mnist") == "cnn"
    assert default_model_for("cifar10") == "cnn-cifar"
    for name in ("movielens-100k", "movielens-1m", "criteo"):
        assert default_model_for(name) == "deepfm"
    assert default_model_for(SimpleNamespace(name="mnist5k", task="classification")) == "mlp"
    assert default_model_for(SimpleNamespace(name="other", task="ctr")) == "deepfm"
    with pytest.raises(ValueError, match="no default model"):
        default_model_for("imagenet")
    for name in ("mnist5k", "digits", "cifar10", "criteo"):
        assert default_model_for(name) in list_models()
