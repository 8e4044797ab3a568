"""responder_weights when every selected node answered: the weights unchanged, as a copy."""

from __future__ import annotations

import numpy as np

from fedstrat.strategies.responder_weights import responder_weights


def test_responder_weights_when_everyone_answered():
    w = np.array([0.1, 0.3, 0.6])
    out, notes = responder_weights(w, np.array([0, 0, 1]), np.array([False, False, True]),
                                   np.ones(3, dtype=bool))
    np.testing.assert_array_equal(out, w)
    assert notes == [] and out is not w
    out[0] = 9.0  # the caller's copy
    assert w[0] == 0.1
