"""What a researcher calling the sampling core directly gets for input it cannot honour: one
ValueError naming the problem, never a silent wrong number (found driving the API by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from fedstrat.sampling import (
    Selection,
    choose_design,
    neyman_allocation,
    pps_inclusion,
    predicted_variance,
    satterthwaite_band,
    stratify_by_histograms,
    systematic_pps,
)
from fedstrat.sampling.difference import (
    difference_estimate,
    residual_pps_allocation,
    residual_pps_variance,
)


@pytest.mark.parametrize("scale", [1e-170, 1e-3, 1.0, 1e3, 1e160])
def test_neyman_allocation_is_the_same_at_every_scale_of_the_stds(scale):
    # m_h ∝ N_h S_h does not change with a common factor; 1e160 overflowed a^2 (27 of 12)
    alloc = neyman_allocation([10, 10, 10], np.array([1.0, 2.0, 4.0]) * scale, 12)
    assert alloc.tolist() == [2, 3, 7]
    costs = neyman_allocation([10, 10, 10], [1.0, 1.0, 1.0], 12, costs=np.array([1, 4, 16]) * scale)
    assert costs.tolist() == neyman_allocation([10, 10, 10], [1.0, 1.0, 1.0], 12,
                                               costs=[1, 4, 16]).tolist()


@pytest.mark.parametrize(("m", "match"), [(7, "exceeds"), (0, ">= 1"), (float("nan"), "integer"),
                                          (2.5, "integer")])
def test_predicted_variance_refuses_an_impossible_sample_size(m, match):
    with pytest.raises(ValueError, match=match):  # m = 7 > N gave a negative variance
        predicted_variance([3, 3], [0.5, 0.5], [1.0, 1.0], [1, 1], "srswor", m=m)


def test_pps_inclusion_and_systematic_pps_refuse_what_they_cannot_draw():
    with pytest.raises(ValueError, match="integer"):
        pps_inclusion([0.2, 0.3, 0.5], 2.7)  # was silently 2
    with pytest.raises(ValueError, match="p > 0"):
        pps_inclusion([0.5, 0.0, 0.5], 3)  # was a NaN
    with pytest.raises(ValueError, match="finite"):
        pps_inclusion([0.2, np.nan], 1)
    with pytest.raises(ValueError, match="sum to an integer"):
        systematic_pps(np.array([0.5, 0.7]), np.random.default_rng(0))
    assert pps_inclusion([0.2, 0.3, 0.5], 2).sum() == pytest.approx(2.0)


def test_satterthwaite_band_needs_a_level_in_the_open_unit_interval():
    for level in (0.0, 1.0, 2.0):
        with pytest.raises(ValueError, match="level"):
            satterthwaite_band(np.array([1.0, 2.0]), np.array([3.0, 4.0]), level)


def test_the_difference_helpers_refuse_inconsistent_input():
    resid = np.arange(12.0).reshape(6, 2)
    sizes, z = [1, 2, 3, 5, 8, 13], [1.0] * 6
    with pytest.raises(ValueError, match="strata label 5 clients"):
        residual_pps_allocation(resid, sizes, [0, 0, 1, 1, 1], z, 2)
    with pytest.raises(ValueError, match="1 <= m_h"):  # a stratum with m_h = 0 was dropped
        residual_pps_variance(resid, sizes, [0, 0, 1, 1, 2, 2], [0, 1, 1], z)
    with pytest.raises(ValueError, match="size_measure"):
        residual_pps_allocation(resid, sizes, [0, 0, 1, 1, 2, 2], [1.0] * 5, 3)
    sel = Selection(ids=np.array([1, 4]), inclusion=np.array([0.5, 0.5]),
                    weights=np.array([0.3, 0.6]))
    bad = resid.copy()
    bad[4, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        difference_estimate(sel, bad, np.zeros((6, 2)), sizes)


def test_design_choice_options_are_checked_or_read_as_meant():
    rng = np.random.default_rng(0)
    hist = rng.multinomial(50, [0.25] * 4, 30).astype(float)
    sizes = np.full(30, 50.0)
    # one design given as a string is that design (it was read letter by letter: 'p')
    assert choose_design(sizes, hist, 5, designs="pps").design in ("pps", "fedavg")
    with pytest.raises(ValueError, match="rel_margin"):  # -1 let a worse design win
        choose_design(sizes, hist, 5, rel_margin=-1)
    for kw, name in (({"max_strata": 0}, "max_strata"), ({"max_strata": -3}, "max_strata"),
                     ({"fit_sample": 0}, "fit_sample")):
        with pytest.raises(ValueError, match=name):  # 0 meant 20, -3 one stratum
            stratify_by_histograms(hist, **kw)
