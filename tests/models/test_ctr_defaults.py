"""CTR training defaults at parity with FuxiCTR: initialisation, embedding L2, dropout, BN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedstrat.models import build_model, train_steps
from fedstrat.models.layers import (
    EMBEDDING_INIT_STD,
    CrossNetworkV2,
    FeatureEmbedding,
    InteractionAggregation,
    MLPBlock,
    embedding_penalty,
    has_embedding_penalty,
)
from fedstrat.models.registry import ModelSpec

CTR_MODELS = ("lr", "fm", "deepfm", "dcnv2", "finalmlp")
DEEP = ("deepfm", "dcnv2", "finalmlp")
SPEC = ModelSpec("ctr", field_dims=(50, 40, 30))


def _ctr_data(n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.stack([rng.integers(0, d, n) for d in SPEC.field_dims], axis=1)
    y = (rng.random(n) < 0.5).astype(np.float32)
    return x, y


def test_embedding_rows_start_normal_with_std_1e4():
    torch.manual_seed(0)
    w = FeatureEmbedding([20_000], 16).embedding.weight.detach()
    assert EMBEDDING_INIT_STD == 1e-4
    assert abs(float(w.std()) - 1e-4) < 3e-6
    assert abs(float(w.mean())) < 3e-6


def test_dense_layers_start_xavier_normal_with_zero_bias():
    torch.manual_seed(0)
    block = MLPBlock(400, (300, 200), output_dim=1)
    linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    for lin in linears:
        fan_out, fan_in = lin.weight.shape
        expected = math.sqrt(2.0 / (fan_in + fan_out))
        assert torch.count_nonzero(lin.bias) == 0
        if lin.weight.numel() > 10_000:
            assert abs(float(lin.weight.detach().std()) / expected - 1) < 0.05


def test_cross_layers_start_xavier_normal_with_zero_bias():
    torch.manual_seed(0)
    net = CrossNetworkV2(256, num_layers=2)
    for lin in net.layers:
        assert torch.count_nonzero(lin.bias) == 0
        assert abs(float(lin.weight.detach().std()) / math.sqrt(2.0 / 512) - 1) < 0.05


def test_interaction_aggregation_bilinear_init_std():
    torch.manual_seed(0)
    agg = InteractionAggregation(64, 64, num_heads=1)
    assert abs(float(agg.w_xy.detach().std()) / math.sqrt(2.0 / (1 + 64 * 64)) - 1) < 0.05
    assert torch.count_nonzero(agg.w_x.bias) == 0


def test_finalmlp_feature_gates_start_at_one():
    torch.manual_seed(0)
    model = build_model("finalmlp", SPEC)
    x = torch.as_tensor(_ctr_data(8)[0])
    emb = model.embedding(x)
    flat = emb.flatten(1)
    assert torch.equal(model.fs1(flat, emb), flat)
    assert torch.equal(model.fs2(flat, emb), flat)


@pytest.mark.parametrize("name", CTR_MODELS)
def test_embedding_l2_is_off_by_default_and_adds_the_documented_penalty(name):
    torch.manual_seed(0)
    assert embedding_penalty(build_model(name, SPEC)) is None
    assert not has_embedding_penalty(build_model(name, SPEC))
    model = build_model(name, SPEC, embedding_l2=0.3)
    assert has_embedding_penalty(model)
    tables = [m.embedding.weight for m in model.modules() if isinstance(m, FeatureEmbedding)]
    expected = sum(0.5 * 0.3 * float(w.detach().pow(2).sum()) for w in tables)
    assert float(embedding_penalty(model).detach()) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["fm", "deepfm"])
def test_embedding_l2_shrinks_the_trained_embeddings(name):
    x, y = _ctr_data()
    norms = {}
    for l2 in (0.0, 1.0):
        torch.manual_seed(0)
        model = build_model(name, SPEC, embedding_l2=l2)
        train_steps(model, x, y, "ctr", epochs=3, batch_size=32, lr=0.01, optimizer="adam")
        norms[l2] = float(model.embedding.embedding.weight.detach().norm())
    assert norms[1.0] < 0.5 * norms[0.0]


@pytest.mark.parametrize("name", DEEP)
def test_dropout_and_batch_norm_options_change_the_model(name):
    torch.manual_seed(0)
    plain = build_model(name, SPEC)
    kinds = {type(m) for m in plain.modules()}
    assert nn.Dropout not in kinds and nn.BatchNorm1d not in kinds
    torch.manual_seed(0)
    model = build_model(name, SPEC, dropout=0.5, batch_norm=True)
    kinds = {type(m) for m in model.modules()}
    assert nn.Dropout in kinds and nn.BatchNorm1d in kinds
    xt = torch.as_tensor(_ctr_data(64)[0])
    with torch.no_grad():
        model.eval()
        a, b = model(xt), model(xt)
        model.train()
        c, d = model(xt), model(xt)
    assert torch.equal(a, b)  # deterministic in eval mode
    assert not torch.equal(c, d)  # dropout active while training
    x, y = _ctr_data()
    out = train_steps(model, x, y, "ctr", epochs=1, batch_size=32, lr=0.01, optimizer="adam")
    assert math.isfinite(out["loss"])
