"""Dataset metadata is the one source of dataset facts (names, task, default model, target)."""

import pytest

from fedstrat.app.config import ConfigError, RunConfig
from fedstrat.data import DATASETS, dataset_info, describe_datasets, list_datasets
from fedstrat.models import default_model_for, list_models, model_task


def test_every_dataset_has_a_loader_and_a_description():
    assert list(describe_datasets()) == list(DATASETS)
    assert sorted(list_datasets()) == sorted(DATASETS)
    assert set(list_datasets(local_only=True)) | set(list_datasets(local_only=False)) == set(
        DATASETS
    )


@pytest.mark.parametrize("name", DATASETS)
def test_default_model_is_registered_for_the_datasets_task(name):
    info = dataset_info(name)
    assert default_model_for(name) == info.default_model
    assert info.default_model in list_models()
    assert model_task(info.default_model) == info.task
    assert info.metric == ("auc" if info.task == "ctr" else "accuracy")
    assert 0.0 < info.default_target < 1.0


def test_run_config_accepts_exactly_the_registered_datasets():
    for name in DATASETS:
        RunConfig(dataset=name).validate()
    with pytest.raises(ConfigError, match="dataset"):
        RunConfig(dataset="not-a-dataset").validate()


def test_unknown_name_names_the_known_ones():
    with pytest.raises(ValueError, match="mnist5k"):
        dataset_info("nope")
