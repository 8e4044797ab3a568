"""The update-sketch method: count sketch by default, recorded in the state; a state that
records none (saved before the option existed) resumes with the Gaussian projection."""

from __future__ import annotations

import json

import pytest
from flwr.serverapp.strategy import FedAvg
from test_strat_checkpoint_v1 import doc, run

from fedstrat.strategies import SelectionOptions, StratifiedSelection


def test_default_is_countsketch_and_is_saved():
    s = StratifiedSelection(FedAvg(fraction_evaluate=0.0), clients_per_round=4)
    assert SelectionOptions(clients_per_round=4).sketch_method == "countsketch"
    assert s.state_dict()["sketch_method"] == "countsketch"


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="sketch_method"):
        SelectionOptions(clients_per_round=4, sketch_method="dense")


@pytest.mark.parametrize("saved", [None, "gaussian", "countsketch"])
def test_resume_uses_the_saved_method(saved):
    d = doc("sketches")
    a = StratifiedSelection(FedAvg(fraction_evaluate=0.0), **d["kwargs"])
    a.load_state_dict(d["state"])  # version 1: no method recorded
    assert a.sketch_method == "gaussian"
    state = json.loads(json.dumps(a.state_dict()))
    if saved is None:
        del state["sketch_method"]
    else:
        state["sketch_method"] = saved
    b = StratifiedSelection(FedAvg(fraction_evaluate=0.0), **d["kwargs"])
    assert b.sketch_method == "countsketch"
    b.load_state_dict(state)
    assert b.sketch_method == (saved or "gaussian")
    run(b, (4, 5))
    assert b.state_dict()["sketch_method"] == (saved or "gaussian")

