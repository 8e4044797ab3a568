r"""Samplers of the measured selection schemes, from the strategies' policy factory.

:data:`MEASURED` maps each measured name to a policy of
:data:`fedstrat.strategies.policies.POLICIES` and its options; samplers come from the policies'
``sampler`` (the same classes the Flower strategy uses). Stratified selection uses the strata
the system would use (k-means on label histograms or update sketches, ``choose_design`` when
``design="auto"``) with a Neyman allocation from the EXACT per-stratum dispersion of the
measured updates (an oracle for the tracked :math:`S_h`), or proportional allocation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from fedstrat.sampling import SelfNormalisedSampler
from fedstrat.strategies.plan import SamplerSpec
from fedstrat.strategies.policies import policy_class

if TYPE_CHECKING:
    from .variance import Population

#: measured selection -> (policy name of :data:`fedstrat.strategies.policies.POLICIES`,
#: option overrides). The samplers come from the policies' ``sampler`` (one factory for the
#: strategy and this module); the stratified variants differ by allocation and features.
MEASURED: dict[str, tuple[str, dict[str, str]]] = {
    "uniform": ("uniform", {}),
    "multinomial": ("multinomial", {}),
    "clustered1": ("clustered1", {}),
    "clustered2": ("clustered2", {}),
    "stratified": ("stratified", {"allocation": "neyman", "stratify_by": "histograms"}),
    "stratified-prop": ("stratified", {"allocation": "proportional", "stratify_by": "histograms"}),
    "stratified-sketch": ("stratified", {"allocation": "neyman", "stratify_by": "sketches"}),
    "poc": ("poc", {}),
    # opt-in (not in the default list): FedAvg = uniform + self-normalised weights, and the
    # difference (control-variate) estimator on the uniform / stratified design
    "fedavg": ("uniform", {"estimator": "ratio"}),
    "difference": ("uniform", {"estimator": "difference"}),
    "stratified-difference": (
        "stratified",
        {"allocation": "neyman", "stratify_by": "histograms", "estimator": "difference"},
    ),
}
#: every measurable selection; a name's position seeds its Monte Carlo generator
MEASURABLE: tuple[str, ...] = tuple(MEASURED)
#: the default measured selections (the first eight and FedAvg, the baseline a user has)
MEASURED_SELECTIONS: tuple[str, ...] = (*MEASURABLE[:8], "fedavg")
#: selections that use the difference estimator (they need control variates)
DIFFERENCE_SELECTIONS: tuple[str, ...] = tuple(
    k for k, (_, o) in MEASURED.items() if o.get("estimator") == "difference"
)


def _stratum_dispersion(
    pop: Population, labels: np.ndarray, design: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per stratum: (N_h, P_h, dispersion) from the exact updates.

    srswor: S_{y,h} = sqrt(sum_{i in h} ||y_i - ybar_h||^2 / (N_h - 1)), y_i = p_i Delta_i.
    pps:    sigma_h = sqrt(sum_{i in h} q_i ||Delta_i - Dbar_h||^2), q_i = p_i / P_h.
    """
    h_count = int(labels.max()) + 1
    nh = np.bincount(labels, minlength=h_count).astype(np.int64)
    ph = np.bincount(labels, weights=pop.p, minlength=h_count)
    disp = np.zeros(h_count)
    for h in range(h_count):
        idx = np.flatnonzero(labels == h)
        if design == "srswor":
            if len(idx) < 2:
                continue
            y = pop.p[idx, None] * pop.updates[idx]
            disp[h] = math.sqrt(float(((y - y.mean(axis=0)) ** 2).sum()) / (len(idx) - 1))
        else:
            q = pop.p[idx] / ph[h]
            d = pop.updates[idx]
            mean = q @ d
            disp[h] = math.sqrt(float(q @ ((d - mean) ** 2).sum(axis=1)))
    return nh, ph, disp


def build_samplers(
    pop: Population,
    m: int,
    histograms: np.ndarray | None = None,
    *,
    selections: Iterable[str] = MEASURED_SELECTIONS,
    design: str = "auto",
    n_strata: int = 0,
    losses: np.ndarray | None = None,
    poc_d: int = 0,
    seed: int = 0,
    plan_cache: dict[str, Any] | None = None,
) -> dict[str, tuple[Any, float, dict[str, Any]]]:
    """``{name: (sampler, predicted variance, info)}`` for the requested selections.

    Samplers come from :func:`fedstrat.strategies.policies.policy_class` (see
    :data:`MEASURED`). Strata come from k-means on the row-normalised label ``histograms``
    (``design="auto"``: ``choose_design`` picks strata count and design; otherwise
    ``stratify_by_histograms`` with ``n_strata`` (0 = automatic) and the given design), or on
    update sketches for ``stratify_by="sketches"``. Neyman allocation uses the exact
    per-stratum dispersion of ``pop`` (see :func:`_stratum_dispersion`). ``plan_cache`` (a
    dict, filled here) keeps the strata plans across calls with the same features.

    ``fedavg`` wraps the uniform sampler in :class:`SelfNormalisedSampler`. The difference
    selections build the ordinary sampler of their design: pass the RESIDUAL population
    ``Delta_i - c_i`` as ``pop`` (the MSE of the difference estimator is the design's MSE on
    the residuals, and the Neyman allocation uses their dispersion).
    """
    from fedstrat import sampling as S

    selections = list(selections)
    unknown = [s for s in selections if s not in MEASURED]
    if unknown:
        raise ValueError(
            f"unknown selection(s) {unknown}; choose from: " + ", ".join(MEASURED_SELECTIONS)
        )
    if not 1 <= m <= pop.n_clients:
        raise ValueError(f"m must be in [1, N={pop.n_clients}], got {m}")
    int_sizes = np.asarray(np.rint(pop.sizes), dtype=np.int64)
    u_pred = float(S.uniform_variance(pop.updates, int_sizes, m))
    if histograms is None and any(
        MEASURED[s][0] == "stratified" and MEASURED[s][1]["stratify_by"] == "histograms"
        for s in selections
    ):
        raise ValueError("stratified selection needs the clients' label histograms")
    plans: dict[str, tuple[Any, str, dict[str, Any]]] = {}
    out: dict[str, tuple[Any, float, dict[str, Any]]] = {}
    for name in selections:
        policy, opts = MEASURED[name]
        if policy != "stratified":
            out[name] = _baseline(policy, pop, int_sizes, m, u_pred, losses, poc_d, seed)
            if opts.get("estimator") == "ratio":
                out[name] = _self_normalised(out[name][0], pop, int_sizes, m)
            continue
        kind = opts["stratify_by"]
        if plan_cache is not None and kind in plan_cache:
            plans[kind] = plan_cache[kind]
        if kind not in plans:
            if kind == "sketches":
                feats = np.asarray(S.sketch_update(pop.updates, dim=64, seed=seed), np.float64)
            else:
                hist = np.asarray(histograms, dtype=np.float64)
                feats = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1e-12)
            plans[kind] = _plan_strata(
                feats, int_sizes, m, design, n_strata, seed, sketches=kind == "sketches",
                counts=None if kind == "sketches" else np.asarray(histograms, np.float64),
            )
            if plan_cache is not None:
                plan_cache[kind] = plans[kind]
        out[name] = _stratified_sampler(
            pop, int_sizes, m, plans[kind], u_pred, seed, neyman=opts["allocation"] == "neyman",
            decide=opts.get("estimator") != "difference",
        )
    return out


def _baseline(
    policy: str,
    pop: Population,
    sizes: np.ndarray,
    m: int,
    u_pred: float,
    losses: np.ndarray | None,
    poc_d: int,
    seed: int,
) -> tuple[Any, float, dict[str, Any]]:
    """A baseline policy's sampler with its exact design variance (clustered2 gets the exact
    updates as representative gradients; poc the given losses, ones if None; MSE only)."""
    from fedstrat import sampling as S

    spec = SamplerSpec(
        sizes,
        m,
        representatives=pop.updates if policy == "clustered2" else None,
        losses=np.asarray(losses if losses is not None else np.ones(pop.n_clients)),
        poc_d=poc_d or None,
        seed=seed,
    )
    smp = policy_class(policy).sampler(spec)
    if policy == "uniform":
        return smp, u_pred, {}
    if policy == "multinomial":
        return smp, float(S.multinomial_variance(pop.updates, sizes, m)), {}
    if policy == "clustered1":
        return smp, float(smp.variance(pop.updates)), {}
    if policy == "clustered2":
        return smp, float(smp.variance(pop.updates)), {"representative": "exact updates (oracle)"}
    return smp, math.nan, {"d": int(smp.d), "biased": True}


def _self_normalised(
    smp: Any, pop: Population, sizes: np.ndarray, m: int
) -> tuple[Any, float, dict[str, Any]]:
    """FedAvg: the uniform sampler with self-normalised weights; predicted MSE by the usual
    linearisation of the ratio estimator, ``T_ratio - T ≈ sum_s w_i (Delta_i - T)`` (HT
    weights), i.e. the uniform design variance of ``Delta_i - T``."""
    from fedstrat import sampling as S

    pred = float(S.uniform_variance(pop.updates - pop.target, sizes, m))
    info = {"estimator": "ratio (self-normalised, FedAvg)", "predicted": "linearised"}
    return SelfNormalisedSampler(smp), pred, info


def plan_strata_from_histograms(
    histograms: np.ndarray,
    sizes: np.ndarray,
    m: int,
    design: str = "auto",
    n_strata: int = 0,
    seed: int = 0,
    plan_cache: dict[str, Any] | None = None,
) -> Any:
    """Labels of the label-histogram strata stratified selection uses (None when ``choose_design``
    keeps uniform); cached in ``plan_cache["histograms"]`` like :func:`build_samplers`."""
    if plan_cache is not None and "histograms" in plan_cache:
        cached = plan_cache["histograms"][0]
        return None if cached is None else _labels_of(cached)
    hist = np.asarray(histograms, dtype=np.float64)
    feats = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1e-12)
    int_sizes = np.asarray(np.rint(sizes), dtype=np.int64)
    plan = _plan_strata(feats, int_sizes, m, design, n_strata, seed, sketches=False)
    if plan_cache is not None:
        plan_cache["histograms"] = plan
    return None if plan[0] is None else _labels_of(plan[0])


def _plan_strata(
    feats: np.ndarray,
    sizes: np.ndarray,
    m: int,
    design: str,
    n_strata: int,
    seed: int,
    sketches: bool,
    counts: np.ndarray | None = None,
) -> tuple[Any, str, dict[str, Any]]:
    """(Strata or None for the FedAvg fallback, design, info) from client features.

    ``design="auto"``: label ``counts`` that pass the chi-square homogeneity test
    (:func:`fedstrat.sampling.label_homogeneity`, IID labels) give None, as in the strategy;
    else ``choose_design`` (against FedAvg) on the features as a proxy for the updates (label
    proportions, or update sketches with ``sketches=True``); else k-means strata and the design.
    """
    from fedstrat import sampling as S

    info: dict[str, Any] = {"strata_from": "update sketches" if sketches else "label histograms"}
    if design == "auto" and counts is not None:
        test = S.label_homogeneity(counts)
        if test.iid():
            info["choose_design"] = f"labels consistent with IID ({test.describe()}): FedAvg"
            return None, "fedavg", info
    if design == "auto":
        kw: dict[str, Any] = {"seed": seed, "normalize": not sketches}
        if n_strata:
            kw["candidate_strata"] = (n_strata,)
        choice = S.choose_design(sizes, feats, m, **kw)
        info["choose_design"] = str(choice.reason)
        if choice.design not in ("pps", "srswor") or choice.strata is None:
            return None, "fedavg", info
        return choice.strata, str(choice.design), info
    if sketches:
        strata = S.stratify_by_sketches(feats, n_strata=n_strata or None, seed=seed)
    else:
        strata = S.stratify_by_histograms(feats, n_strata=n_strata or None, seed=seed)
    return strata, design, info


def _stratified_sampler(
    pop: Population,
    sizes: np.ndarray,
    m: int,
    plan: tuple[Any, str, dict[str, Any]],
    u_pred: float,
    seed: int,
    neyman: bool,
    decide: bool = True,
) -> tuple[Any, float, dict[str, Any]]:
    """Sampler, predicted variance and info for a planned stratification.

    Neyman allocation from the exact per-stratum dispersion of ``pop`` (oracle S_h), or
    proportional (pps: m_h ∝ P_h, self-weighting; srswor: m_h ∝ N_h). With ``decide`` the
    strategy's rule with perfect evidence: FedAvg (uniform, self-normalised) unless the
    design's exact variance is below FedAvg's linearised MSE on these updates; no strata
    (the plan's fallback) is FedAvg too."""
    from fedstrat import sampling as S

    strata, design, info = plan

    def fedavg(why: str) -> tuple[Any, float, dict[str, Any]]:
        smp = policy_class("uniform").sampler(SamplerSpec(sizes, m, seed=seed))
        return _self_normalised(smp, pop, sizes, m)[:2] + ({**info, "fallback": why},)

    if strata is None:  # the strategy would run FedAvg: so does the measurement
        return fedavg("fedavg (no strata)")
    labels = _labels_of(strata)
    strata_obj = strata if hasattr(strata, "n_strata") else S.Strata(labels)
    nh, ph, disp = _stratum_dispersion(pop, labels, design)
    if neyman:
        if design == "pps":
            alloc = S.neyman_allocation(ph, disp, m, capacity=nh)
        else:
            alloc = S.neyman_allocation(nh, disp, m)
    elif design == "pps":
        alloc = S.proportional_allocation(ph, m, capacity=nh)
    else:
        alloc = S.proportional_allocation(nh, m)
    alloc = np.asarray(alloc, dtype=np.int64)
    pred = float(S.estimator_variance(pop.updates, sizes, strata_obj, alloc, design))
    if decide:
        f_pred = float(S.fedavg_variance(pop.updates, sizes, m))
        info = {**info, "decision": f"{design} {pred:.4g} vs FedAvg {f_pred:.4g}"}
        if not pred < f_pred:
            return fedavg(f"fedavg (exact: {design} {pred:.4g} >= FedAvg {f_pred:.4g})")
    spec = SamplerSpec(sizes, m, strata=strata_obj, allocation=alloc, design=design, seed=seed)
    smp = policy_class("stratified").sampler(spec)
    info = {
        **info,
        "design": design,
        "n_strata": int(len(nh)),
        "N_h": nh.tolist(),
        "allocation": alloc.tolist(),
        "S_h": "exact, from these updates" if neyman else "not used (proportional)",
    }
    return smp, pred, info


def _labels_of(strata: Any) -> np.ndarray:
    labels = getattr(strata, "labels", strata)
    return np.asarray(labels, dtype=np.int64)
