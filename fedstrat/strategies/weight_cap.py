"""Sizes that cannot be bought: consistency checks of what nodes claim about their size, and
the cap on the sizes ``n_i`` behind every design's ``p_i = n_i / n``.

A node's size is learned once (from its profile reply, else from its first accepted training
reply). Later claims must agree with it within a tolerance (:func:`claim_mismatch`), and a
profile's ``num-examples`` must agree with the sum of its label histogram
(:func:`profile_mismatch`, allowing for the local-DP noise of the histogram). Whatever a node
claims consistently, its size enters the designs as ``min(n_i, c)`` with
``c = size_cap * median(learned sizes)`` (:func:`size_cap_value`): a node can raise its share
of the federation to at most ``c / (c + sum of the others' sizes)``, whatever it claims.
Everything here is pure (numpy only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .options import SelectionOptions


@dataclass(frozen=True)
class SizeRules:
    """How claimed sizes are checked and capped.

    ``cap_multiple``: sizes above ``cap_multiple * median(learned sizes)`` are cut to that
    value (0 = no cap). ``tolerance``: relative difference allowed between two statements of
    the same size (profile vs histogram, profile vs training reply, first vs later training
    reply). ``epsilon``: the local-DP epsilon the profile query asked for (0 = exact
    histograms).
    """

    cap_multiple: float = 20.0
    tolerance: float = 0.1
    epsilon: float = 0.0

    @classmethod
    def of(cls, options: SelectionOptions) -> SizeRules:
        """The rules of the selection options ``size_cap``, ``size_tolerance`` and
        ``profile_epsilon``."""
        return cls(options.size_cap, options.size_tolerance, options.profile_epsilon)


def histogram_allowance(epsilon: float, n_bins: int) -> float:
    """Absolute slack allowed between a profile's ``num-examples`` and its histogram's sum.

    Rounding: half an example per bin. With ``epsilon > 0`` the histogram went through
    :func:`fedstrat.sampling.privatize_histogram` (two-sided geometric noise ``Z_j``,
    ``a = exp(-epsilon)``, then clipped at 0), so ``|sum(noisy) - n| <= sum_j |Z_j|`` with mean
    ``C E|Z| = 2 a C / (1 - a^2)`` and standard deviation at most ``sqrt(C E[Z^2])``,
    ``E[Z^2] = 2 a / (1 - a)^2``; the allowance is the mean plus 8 standard deviations
    (Chebyshev: exceeded with probability below 1/64, in practice far less).
    """
    base = 0.5 * n_bins
    if epsilon <= 0 or math.isinf(epsilon):
        return base
    a = math.exp(-epsilon)
    mean_abs = 2.0 * a / (1.0 - a * a)
    second = 2.0 * a / (1.0 - a) ** 2
    return base + n_bins * mean_abs + 8.0 * math.sqrt(n_bins * second)


def profile_mismatch(num_examples: float, histogram: list[float], rules: SizeRules) -> str | None:
    """The reason a profile is inconsistent (``num-examples`` vs the histogram's sum), or None.

    Inconsistent when ``|sum(h) - n| > tolerance * min(n, sum(h)) + histogram_allowance``.
    """
    total = float(sum(histogram))
    n = float(num_examples)
    slack = rules.tolerance * min(n, total) + histogram_allowance(rules.epsilon, len(histogram))
    if abs(total - n) > slack:
        return (
            f"profile num-examples {n:.6g} disagrees with its label histogram "
            f"(sum {total:.6g}, allowed difference {slack:.3g})"
        )
    return None


def claim_mismatch(claimed: float, learned: float, tolerance: float, key: str) -> str | None:
    """The reason a training reply's size claim disagrees with the learned size, or None.

    Disagrees when ``|claimed - learned| > tolerance * learned + 0.5`` (half an example of
    rounding).
    """
    slack = tolerance * learned + 0.5
    if abs(float(claimed) - float(learned)) > slack:
        return (
            f"metric '{key}' = {float(claimed):.6g} disagrees with the node's learned size "
            f"{float(learned):.6g} (allowed difference {slack:.3g})"
        )
    return None


def size_cap_value(learned: list[float] | np.ndarray, multiple: float) -> float:
    """``multiple * median(learned)``; ``inf`` without a cap (``multiple`` 0) or sizes.

    The median is unchanged by any minority of nodes, so as long as more than half of the
    learned sizes are honest the cap is at most ``multiple`` times an honest size.
    """
    values = np.asarray(learned, dtype=np.float64)
    if multiple <= 0 or values.size == 0:
        return math.inf
    return float(multiple * np.median(values))


@dataclass(frozen=True)
class CapEffect:
    """What the size cap did to a population: the cap ``c`` (``inf`` = none), the nodes whose
    learned size exceeded it, their learned (claimed) sizes, and ``removed``: the share of the
    population's total learned size that the cap took away,
    ``(sum_i n_i - sum_i min(n_i, c)) / sum_i n_i``."""

    cap: float
    nodes: list[int]
    claimed: list[float]
    removed: float

    @property
    def binding(self) -> bool:
        """True when the cap cut at least one node."""
        return bool(self.nodes)

    def to_json(self) -> dict[str, Any]:
        """``{"cap", "nodes", "claimed", "removed"}`` (cap None when there is none)."""
        return {
            "cap": None if math.isinf(self.cap) else self.cap,
            "nodes": list(self.nodes),
            "claimed": list(self.claimed),
            "removed": self.removed,
        }


def cap_effect(nodes: list[int], learned: list[float | None], cap: float) -> CapEffect:
    """The :class:`CapEffect` of cap ``c`` on ``nodes`` with learned sizes ``learned`` (None:
    not learned yet, untouched by the cap)."""
    hit = [(n, float(s)) for n, s in zip(nodes, learned, strict=True) if s is not None and s > cap]
    known = [float(s) for s in learned if s is not None]
    total = float(sum(known))
    removed = float(sum(s - cap for _, s in hit)) / total if hit and total > 0 else 0.0
    return CapEffect(cap, [n for n, _ in hit], [s for _, s in hit], removed)


#: fewest sizes (learned ones and a round's first claims) whose median caps a first claim
MIN_SIZES_FOR_CLAIMS = 3


@dataclass(frozen=True)
class FirstClaims:
    """FedAvg's weights for nodes drawn before their size was known.

    A node whose size is not learned yet enters the draw with the fill size ``fill`` (the mean
    learned size). In a round aggregated by the ratio estimator (FedAvg's self-normalised
    weights :math:`n_i / \\sum_{j \\in s} n_j` with a uniform draw) a responder among ``unknown``
    is weighted by its own claim instead, capped like every size: :meth:`factors` multiplies its
    design weight by :math:`\\min(n_i, c) / \\text{fill}`, with
    :math:`c` = ``cap_multiple`` x median(``learned`` and the round's first claims), so the round
    weighs its responders as Flower's FedAvg does, within the cap. With fewer than
    :data:`MIN_SIZES_FOR_CLAIMS` sizes to take the median of (one liar could set it), the fill
    stays. The claim is learned as the node's size afterwards, as before.
    """

    unknown: frozenset[int]
    fill: float
    learned: tuple[float, ...]
    cap_multiple: float

    def factors(self, nodes: list[int], claims: list[float]) -> np.ndarray:
        """Multipliers of the responders' weights (1 for nodes whose size was known)."""
        first = [(k, float(c)) for k, (n, c) in enumerate(zip(nodes, claims, strict=True))
                 if n in self.unknown and math.isfinite(float(c)) and float(c) > 0]
        out = np.ones(len(nodes))
        if not first or len(self.learned) + len(first) < MIN_SIZES_FOR_CLAIMS:
            return out
        cap = size_cap_value(list(self.learned) + [c for _, c in first], self.cap_multiple)
        for k, c in first:
            out[k] = min(c, cap) / self.fill
        return out
