r"""The scale of the updates from round to round, so that the trackers do not lag it.

Updates shrink as training goes on. A tracker that forgets past rounds by a factor
:math:`d` per round mixes the dispersions of several past rounds (about :math:`d / (1 - d)`
rounds back), so with shrinking updates it over-predicts the next round's. :class:`UpdateScale`
measures each round's scale, the weighted mean squared sketch norm of its responders

.. math::  s_t = \sum_i w_i \|z_i\|^2 \Big/ \sum_i w_i ,

and forecasts the next round's by an exponentially weighted mean of :math:`y_t = \log s_t`
(smoothing ``alpha``; a geometric mean of the past scales, the last weighing ``alpha``):

.. math::  L_t = \alpha y_t + (1 - \alpha) L_{t-1},\qquad \hat s_{t+1} = e^{L_t}

(:math:`L_1 = y_1`). One round's :math:`s_t` from a few responders is noisy (log-sd ~0.2
with 10 a round on MNIST); the smoothing cuts that by :math:`\sqrt{\alpha / (2 - \alpha)}`
(0.58) at the cost of about :math:`(1 - \alpha) / \alpha` rounds of lag in the scale alone
(one round with ``alpha = 0.5``; Holt's linear trend on :math:`y_t` extrapolated the shrink
too far and was noisier in the replays of experiments/README.md section 4).

The trackers hold every past sketch rescaled to that forecast
(:meth:`.StratumVarianceTracker.rescale_to`: a round-:math:`\tau` sketch counts as
:math:`z \sqrt{\hat s_{t+1} / s_\tau}`), so their moments describe the spread of updates
*relative to their round's scale*, times the scale of the round they predict. A common factor
on every update changes the forecasts by its square and no ratio of predictions; a constant
scale changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .tracker import StratumVarianceTracker

#: smoothing of log s_t (module doc)
ALPHA = 0.5


class UpdateScale:
    """Per-round scale of update sketches and its one-round-ahead forecast (module doc)."""

    def __init__(self, alpha: float = ALPHA) -> None:
        if not 0.0 < float(alpha) <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = float(alpha)
        self.level_: float | None = None

    def observe(self, sketches: Any, weights: Any) -> float | None:
        """Add one round: ``sketches`` (k, dim) of the responders with aggregation ``weights``
        (k,); those with weight <= 0 are left out. Returns :math:`s_t`, or None (nothing
        changed) without a positive weight and a nonzero finite scale."""
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        ok = w > 0
        if not ok.any():
            return None
        z = np.asarray(sketches, dtype=np.float64)[ok]
        s = float(w[ok] @ np.einsum("ij,ij->i", z, z) / w[ok].sum())
        if not (math.isfinite(s) and s > 0):
            return None
        y = math.log(s)
        self.level_ = y if self.level_ is None else (
            self.alpha * y + (1.0 - self.alpha) * self.level_)
        return s

    def forecast(self) -> float | None:
        """:math:`\\hat s_{t+1} = e^{L_t}`; None before any round."""
        return None if self.level_ is None else math.exp(self.level_)

    @contextmanager
    def feeding(self, sketches: Any, weights: Any,
                trackers: Sequence[StratumVarianceTracker | None]) -> Iterator[None]:
        """Around feeding one round's ``sketches`` to ``trackers`` (None entries skipped):
        :meth:`observe` them, bring the trackers to :math:`s_t` before and to the forecast
        after (:meth:`.StratumVarianceTracker.rescale_to`); nothing without sketches or a
        usable scale."""
        s = None if sketches is None else self.observe(sketches, weights)
        live = [t for t in trackers if t is not None] if s is not None else []
        for t in live:
            t.rescale_to(s)
        yield
        ahead = self.forecast()
        for t in live:
            t.rescale_to(ahead)

    def to_json(self) -> dict[str, Any]:
        """Checkpoint form."""
        return {"alpha": self.alpha, "level": self.level_}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> UpdateScale:
        """A scale restored from :meth:`to_json` (None or empty: a fresh one)."""
        if not state:
            return cls()
        out = cls(float(state["alpha"]))
        out.level_ = None if state["level"] is None else float(state["level"])
        return out
