"""Shared CTR layers against their defining formulas."""

from __future__ import annotations

import itertools

import pytest
import torch

from fedstrat.models.layers import (
    CrossNetworkV2,
    FeatureEmbedding,
    FeatureSelection,
    FMInteraction,
    InteractionAggregation,
    LinearLogit,
    MLPBlock,
    make_activation,
)


def test_feature_embedding_uses_per_field_offsets():
    torch.manual_seed(0)
    emb = FeatureEmbedding([3, 5, 2], 4)
    x = torch.tensor([[2, 0, 1], [0, 4, 0]])
    out = emb(x)
    assert out.shape == (2, 3, 4)
    table = emb.embedding.weight
    for b in range(2):
        for f, off in enumerate([0, 3, 8]):
            assert torch.equal(out[b, f], table[off + x[b, f]])
    assert list(emb.state_dict()) == ["embedding.weight"]  # offsets are not state


def test_feature_embedding_errors():
    with pytest.raises(ValueError, match="field_dims"):
        FeatureEmbedding([3, 0], 4)
    with pytest.raises(ValueError, match="field_dims"):
        FeatureEmbedding([], 4)
    with pytest.raises(ValueError, match="embedding_dim"):
        FeatureEmbedding([3], 0)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        FeatureEmbedding([3, 4], 2)(torch.zeros(5, 3, dtype=torch.long))


def test_linear_logit_is_bias_plus_field_weights():
    lin = LinearLogit([2, 3])
    with torch.no_grad():
        lin.weights.embedding.weight.copy_(torch.arange(5.0).view(5, 1))
        lin.bias.fill_(0.5)
    out = lin(torch.tensor([[1, 2], [0, 0]]))
    # rows: field0 -> 0..1, field1 -> 2..4
    assert torch.allclose(out, torch.tensor([0.5 + 1 + 4, 0.5 + 0 + 2]))


def test_fm_interaction_equals_pairwise_dot_products():
    torch.manual_seed(1)
    e = torch.randn(6, 5, 3, dtype=torch.float64)
    brute = torch.zeros(6, dtype=torch.float64)
    for f, g in itertools.combinations(range(5), 2):
        brute += (e[:, f] * e[:, g]).sum(dim=1)
    assert torch.allclose(FMInteraction()(e), brute)


def test_cross_network_v2_formula():
    torch.manual_seed(2)
    net = CrossNetworkV2(4, num_layers=2).double()
    x0 = torch.randn(3, 4, dtype=torch.float64)
    x = x0
    for layer in net.layers:
        x = x0 * (x @ layer.weight.T + layer.bias) + x
    assert torch.allclose(net(x0), x)
    with pytest.raises(ValueError):
        CrossNetworkV2(4, num_layers=0)


def test_mlp_block_shapes_and_options():
    torch.manual_seed(3)
    x = torch.randn(8, 6)
    assert MLPBlock(6, (5, 4))(x).shape == (8, 4)
    assert MLPBlock(6, (5,), output_dim=1)(x).shape == (8,)
    assert MLPBlock(6, (5,), output_dim=3)(x).shape == (8, 3)
    block = MLPBlock(6, (5,), batch_norm=True, dropout=0.5, activation="tanh")
    kinds = [type(m).__name__ for m in block.net]
    assert kinds == ["Linear", "BatchNorm1d", "Tanh", "Dropout"]
    block.eval()
    assert torch.equal(block(x), block(x))  # dropout is off in eval mode
    with pytest.raises(ValueError, match="activation"):
        make_activation("nope")
    with pytest.raises(ValueError, match="dropout"):
        MLPBlock(6, (5,), dropout=1.0)
    with pytest.raises(ValueError, match="hidden_units"):
        MLPBlock(6, (0,))


def test_interaction_aggregation_formula_multi_head():
    torch.manual_seed(4)
    agg = InteractionAggregation(4, 6, num_heads=2).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    y = torch.randn(3, 6, dtype=torch.float64)
    expected = (
        (x @ agg.w_x.weight.T).squeeze(-1) + agg.w_x.bias + (y @ agg.w_y.weight.T).squeeze(-1)
    )
    for h in range(2):
        xh, yh = x[:, 2 * h : 2 * h + 2], y[:, 3 * h : 3 * h + 3]
        expected = expected + ((xh @ agg.w_xy[h]) * yh).sum(dim=1)
    assert torch.allclose(agg(x, y), expected)
    with pytest.raises(ValueError, match="num_heads"):
        InteractionAggregation(4, 6, num_heads=4)


def test_feature_selection_shared_context_starts_as_identity_and_learns():
    torch.manual_seed(5)
    emb = torch.randn(4, 3, 2)
    flat = emb.flatten(1)
    fs = FeatureSelection(6, 2, context_fields=None)
    assert torch.equal(fs(flat, emb), flat)  # context 0, zero biases: gate 2*sigmoid(0) = 1
    fs(flat, emb).sum().backward()
    assert fs.gate.net[-1].bias.grad.abs().sum() > 0  # the per-dimension scale learns


def test_feature_selection_with_context_fields_is_the_gate_formula():
    torch.manual_seed(5)
    emb = torch.randn(4, 3, 2)
    flat = emb.flatten(1)
    fs = FeatureSelection(6, 2, context_fields=[0, 2])
    expected = flat * 2.0 * torch.sigmoid(fs.gate(emb[:, [0, 2], :].flatten(1)))
    assert torch.allclose(fs(flat, emb), expected)
    small = emb * 1e-4  # embeddings start near 0, so the gate starts near 1
    assert torch.allclose(fs(small.flatten(1), small), small.flatten(1), rtol=1e-3, atol=0)
    fs(flat, emb).sum().backward()
    assert fs.gate.net[-1].weight.grad.abs().sum() > 0
