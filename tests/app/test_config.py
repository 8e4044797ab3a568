"""RunConfig: both key spellings, TOML files, validation errors."""

from pathlib import Path

import pytest

from fedstrat.app.config import ConfigError, RunConfig


def test_defaults_are_the_embedded_job() -> None:
    cfg = RunConfig().validate()
    assert (cfg.dataset, cfg.partition, cfg.alpha) == ("mnist5k", "dirichlet", 0.1)
    assert (cfg.num_clients, cfg.clients_per_round) == (100, 10)
    assert (cfg.selection, cfg.allocation, cfg.strategy) == ("stratified", "neyman", "fedavg")


def test_from_mapping_accepts_both_spellings_and_roundtrips() -> None:
    cfg = RunConfig.from_mapping({"num-clients": 20, "clients_per_round": "5", "lr": "0.1"})
    assert cfg.num_clients == 20 and cfg.clients_per_round == 5 and cfg.lr == 0.1
    flower = cfg.to_flower()
    assert flower["num-clients"] == 20
    assert all(isinstance(v, bool | int | float | str) for v in flower.values())
    assert RunConfig.from_mapping(flower) == cfg


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"selection": "random"}, "unknown selection"),
        ({"num-clients": 0}, "num-clients must be >= 1"),
        ({"clients-per-round": 200}, "exceeds num-clients"),
        ({"alpha": 0.0}, "alpha must be > 0"),
        ({"lr": -1.0}, "lr must be > 0"),
    ],
)
def test_validation_errors(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values).validate()


def test_unknown_key_and_bad_types() -> None:
    with pytest.raises(ConfigError, match="unknown option 'num-client'"):
        RunConfig.from_mapping({"num-client": 3})
    with pytest.raises(ConfigError, match="must be an integer"):
        RunConfig.from_mapping({"rounds": 2.5})
    with pytest.raises(ConfigError, match="must be a number"):
        RunConfig.from_mapping({"lr": "fast"})


def test_toml(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('dataset = "digits"\nnum-clients = 30\n[unused]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown option 'unused'"):
        RunConfig.from_toml(path)
    path.write_text('dataset = "digits"\nnum-clients = 30\n', encoding="utf-8")
    cfg = RunConfig.from_toml(path)
    assert cfg.dataset == "digits" and cfg.num_clients == 30
    (tmp_path / "bad.toml").write_text("dataset = ", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        RunConfig.from_toml(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.from_toml(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "name",
    ["lr", "proximal_mu", "server_lr", "clip_norm", "target_accuracy", "profile_epsilon",
     "node_wait_timeout", "round_timeout", "alpha"],
)
@pytest.mark.parametrize("value", [float("inf"), float("nan"), float("-inf")])
def test_non_finite_numbers_are_rejected_by_name(name: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"{name.replace('_', '-')} must be a finite number"):
        RunConfig(**{name: value}).validate()


def test_cross_option_limits_are_checked_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match="n-strata"):
        RunConfig(n_strata=50, clients_per_round=5).validate()
    with pytest.raises(ConfigError, match="poc-d"):
        RunConfig(selection="poc", poc_d=3, clients_per_round=5).validate()
    RunConfig(n_strata=5, clients_per_round=5, poc_d=5).validate()
