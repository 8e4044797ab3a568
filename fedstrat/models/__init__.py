"""PyTorch models, shared CTR layers, training utilities and metrics (no flwr).

>>> model = build_model("deepfm", ModelSpec(task="ctr", field_dims=(10, 20)))
"""

# One model a file in fedstrat.models.zoo; importing it runs their @register_model decorators.
# The zoo imports the registry, never the other way round.
from fedstrat.models import zoo  # noqa: F401
from fedstrat.models.registry import (
    DEFAULT_MODELS,
    ModelSpec,
    build_model,
    default_model_for,
    list_models,
    model_task,
    register_model,
    to_spec,
)
from fedstrat.models.train import (
    evaluate,
    get_device,
    model_keys,
    model_to_ndarrays,
    ndarrays_to_model,
    predict,
    train_steps,
)

__all__ = [
    "DEFAULT_MODELS",
    "ModelSpec",
    "build_model",
    "default_model_for",
    "evaluate",
    "get_device",
    "list_models",
    "model_keys",
    "model_task",
    "model_to_ndarrays",
    "ndarrays_to_model",
    "predict",
    "register_model",
    "to_spec",
    "train_steps",
]
