"""SelectionOptions: one declarative validation, one vocabulary shared with the app and CLI."""

from __future__ import annotations

import dataclasses
import math

import pytest
from flwr.serverapp.strategy import FedAvg

from fedstrat.strategies import POLICIES, SelectionOptions, StratifiedSelection
from fedstrat.strategies import options as opts

BAD = [
    ({"selection": "random"}, "selection must be one of"),
    ({"design": "cluster"}, "design must be one of"),
    ({"allocation": "optimal"}, "allocation must be one of"),
    ({"estimator": "mean"}, "estimator must be one of"),
    ({"stratify_by": "labels"}, "stratify_by must be one of"),
    ({"clients_per_round": 2.5}, "clients_per_round must be an integer"),
    ({"clients_per_round": True}, "clients_per_round must be an integer"),
    ({"clients_per_round": 0}, "clients_per_round must be >= 1, got 0"),
    ({"n_strata": 0}, "n_strata must be >= 1 or None, got 0"),
    ({"n_strata": 20}, "n_strata cannot exceed clients_per_round"),
    ({"max_strata": 1}, "max_strata must be >= 2 or None, got 1"),
    ({"restratify_every": -1}, "restratify_every must be >= 0, got -1"),
    ({"warmup_rounds": -2}, "warmup_rounds must be >= 0"),
    ({"min_per_stratum": -1}, "min_per_stratum must be >= 0"),
    ({"node_wait_timeout": -1.0}, "node_wait_timeout must be finite and >= 0"),
    ({"profile_timeout": math.inf}, "profile_timeout must be finite and >= 0"),
    ({"poll_interval": -0.1}, "poll_interval must be finite and >= 0"),
    ({"profile_epsilon": math.nan}, "profile_epsilon must be finite and >= 0"),
    ({"sketch_dim": 0}, "sketch_dim must be >= 1, got 0"),
    ({"poc_d": 2}, "poc_d must be >= clients_per_round"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD)
def test_bad_option_is_a_value_error_naming_it(kwargs, message):
    args = {"clients_per_round": 5, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SelectionOptions(**args)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        StratifiedSelection(FedAvg(), **args)


def test_every_rule_names_an_option():
    names = set(SelectionOptions.names())
    assert {name for name, _, _ in opts.RULES} <= names
    assert set(opts.CHOICES) <= names


def test_options_are_frozen_and_normalised():
    o = SelectionOptions(clients_per_round=5.0, node_wait_timeout=3, seed=2.0)
    assert type(o.clients_per_round) is int and type(o.seed) is int
    assert type(o.node_wait_timeout) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.seed = 3  # type: ignore[misc]


def test_selection_vocabulary_is_the_policy_registry():
    assert opts.SELECTIONS == tuple(POLICIES) and opts.SELECTIONS[0] == "stratified"


def test_app_config_uses_the_same_vocabulary_objects():
    from fedstrat.app import config

    for name in ("SELECTIONS", "DESIGNS", "ALLOCATIONS", "ESTIMATORS", "STRATIFY_BY"):
        assert getattr(config, name) is getattr(opts, name)


def test_strategy_accepts_an_options_object_or_keywords_not_both():
    o = SelectionOptions(clients_per_round=4, selection="uniform")
    assert StratifiedSelection(FedAvg(), options=o).options is o
    assert StratifiedSelection(FedAvg(), 4, selection="uniform").options == o
    with pytest.raises(TypeError):
        StratifiedSelection(FedAvg(), 4, options=o)
    with pytest.raises(TypeError):
        StratifiedSelection(FedAvg())
    with pytest.raises(TypeError):
        StratifiedSelection(FedAvg(), 4, no_such_option=1)
    with pytest.raises(ValueError, match="flwr Strategy"):
        StratifiedSelection(object(), 4)  # type: ignore[arg-type]
