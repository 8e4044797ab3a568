"""Selection policies: one small class per selection scheme behind one protocol, one registry.

A policy turns the round's population (:class:`~fedstrat.strategies.plan.PopulationFrame`) into
a :class:`~fedstrat.strategies.plan.Draw` (``plan``), learns from the accepted replies
(``observe``) and checkpoints what it learnt (``state_dict`` / ``load_state_dict``). Each class
also builds its :class:`~fedstrat.sampling.Sampler` from a :class:`SamplerSpec`
(``sampler``), which is how ``fedstrat.measure`` builds the same samplers from measured data.

Adding a scheme: write one class here (``name``, ``sampler``, optionally ``plan``) and add it to
:data:`POLICIES`; :data:`fedstrat.strategies.options.SELECTIONS` is the registry's key list.
"""

from __future__ import annotations

import logging
from logging import INFO
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from fedstrat.sampling import (
    ClusteredSampler,
    MultinomialSampler,
    PowerOfChoiceSampler,
    Sampler,
    UniformSampler,
    default_poc_d,
)

from .plan import Draw, Feedback, PopulationFrame, SamplerSpec
from .stratified_policy import StratifiedPolicy
from .stratifier import feature_nodes, node_features

if TYPE_CHECKING:
    from .options import SelectionOptions

log = logging.getLogger("flwr").log


@runtime_checkable
class SelectionPolicy(Protocol):
    """What :class:`~fedstrat.strategies.StratifiedSelection` asks of a selection scheme."""

    name: ClassVar[str]

    def plan(self, frame: PopulationFrame, rng: np.random.Generator) -> Draw:
        """Choose this round's clients (indices into ``frame.nodes``) with ``rng``."""
        ...

    def observe(self, feedback: Feedback) -> None:
        """Learn from the round's accepted replies."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (an empty dict = nothing learnt yet)."""
        ...


class BaselinePolicy:
    """A scheme that needs nothing but the current registry: no learning, no state."""

    name: ClassVar[str] = ""
    without_replacement: ClassVar[bool] = False

    def __init__(self, options: SelectionOptions) -> None:
        self.options = options

    @staticmethod
    def sampler(spec: SamplerSpec) -> Sampler:
        """The scheme's sampler for ``spec``."""
        raise NotImplementedError

    def spec(self, frame: PopulationFrame) -> SamplerSpec:
        """The sampler inputs for this round (sizes and m)."""
        return SamplerSpec(frame.sizes, frame.m)

    def plan(self, frame: PopulationFrame, rng: np.random.Generator) -> Draw:
        """Draw from :meth:`sampler` with ``rng``."""
        selection = self.sampler(self.spec(frame)).sample(rng)
        return Draw(self.name, selection, self.without_replacement)

    def observe(self, feedback: Feedback) -> None:
        """Nothing to learn (what matters is in the registry)."""

    def state_dict(self) -> dict[str, Any]:
        """No state."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """No state."""


class UniformPolicy(BaselinePolicy):
    """SRSWOR of ``m`` nodes, HT weights ``N p_i / m``."""

    name = "uniform"
    without_replacement = True

    @staticmethod
    def sampler(spec: SamplerSpec) -> Sampler:
        return UniformSampler(spec.sizes, spec.m, seed=spec.seed)


class MultinomialPolicy(BaselinePolicy):
    """``m`` iid draws with ``P(i) = p_i`` (Li et al. 2020)."""

    name = "multinomial"

    @staticmethod
    def sampler(spec: SamplerSpec) -> Sampler:
        return MultinomialSampler(spec.sizes, spec.m, seed=spec.seed)


class Clustered1Policy(BaselinePolicy):
    """Clustered Sampling, Algorithm 1 (Fraboni et al. 2021): clusters by sample size."""

    name = "clustered1"

    @staticmethod
    def sampler(spec: SamplerSpec) -> Sampler:
        return ClusteredSampler(spec.sizes, spec.m, algorithm=1, seed=spec.seed)


class Clustered2Policy(BaselinePolicy):
    """Clustered Sampling, Algorithm 2: clusters by representative vectors (the nodes' last
    update sketches, else their label proportions; Algorithm 1 while some node has neither)."""

    name = "clustered2"

    @staticmethod
    def sampler(spec: SamplerSpec) -> Sampler:
        if spec.representatives is None:
            return ClusteredSampler(spec.sizes, spec.m, algorithm=1, seed=spec.seed)
        return ClusteredSampler(
            spec.sizes, spec.m, algorithm=2, updates=spec.representatives, seed=spec.seed
        )

    def spec(self, frame: PopulationFrame) -> SamplerSpec:
        reg, nodes = frame.registry, frame.nodes
        feats = None
        if all(n in reg.sketches for n in nodes):
            feats = reg.sketch_matrix(nodes)
        elif len(feature_nodes(reg, nodes, "histograms")) == len(nodes):
            feats = node_features(reg, nodes, "histograms")
        if feats is None:
            log(
                INFO,
                "clustered2: no representative vectors for every node yet, "
                "using algorithm 1 this round",
            )
        return SamplerSpec(frame.sizes, frame.m, representatives=feats)


class PowerOfChoicePolicy(BaselinePolicy):
    """Power-of-Choice (Cho et al. 2020), biased: ``d`` candidates ∝ ``p_i``, keep the ``m``
    with the highest last loss (unseen nodes first)."""

    name = "poc"

    @staticmethod
    def sampler(spec: SamplerSpec) -> Sampler:
        n = len(spec.sizes)
        d = max(default_poc_d(n, spec.m, spec.poc_d), spec.m)
        smp = PowerOfChoiceSampler(spec.sizes, spec.m, d, seed=spec.seed)
        losses = spec.losses if spec.losses is not None else np.full(n, np.inf)
        smp.set_losses(np.asarray(losses, dtype=np.float64))
        return smp

    def spec(self, frame: PopulationFrame) -> SamplerSpec:
        losses = [frame.registry.losses.get(n, np.inf) for n in frame.nodes]
        return SamplerSpec(
            frame.sizes,
            frame.m,
            losses=np.asarray(losses, dtype=np.float64),
            poc_d=self.options.poc_d,
        )


#: selection name -> policy class (the first is the default)
POLICIES: dict[str, type] = {
    cls.name: cls
    for cls in (
        StratifiedPolicy,
        UniformPolicy,
        MultinomialPolicy,
        Clustered1Policy,
        Clustered2Policy,
        PowerOfChoicePolicy,
    )
}


def policy_class(name: str) -> type:
    """The policy class registered as ``name`` (ValueError naming the known ones)."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown selection {name!r}; choose from: {', '.join(POLICIES)}"
        ) from None


def make_policy(options: SelectionOptions) -> SelectionPolicy:
    """The policy of ``options.selection``, configured by ``options``."""
    policy: SelectionPolicy = policy_class(options.selection)(options)
    return policy
