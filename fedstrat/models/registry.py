"""Model registry: build any model by name from a small duck-typed dataset description.

``build_model(name, dataset_or_meta, **kw)`` accepts a :class:`ModelSpec` or any object with
``task`` ("classification" | "ctr"), an input shape (``input_shape`` or ``x`` whose
``shape[1:]`` is used), ``num_classes`` and, for CTR, ``field_dims``. A ``fedstrat.data.Dataset``
works directly. Default models per dataset come from the dataset metadata
(:mod:`fedstrat.data.info`, no loaders).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from fedstrat.data.info import DATASET_INFO

TASKS = ("classification", "ctr")


@dataclass(frozen=True)
class ModelSpec:
    """What a model builder needs to know about the data."""

    task: str
    input_shape: tuple[int, ...] = ()
    num_classes: int = 2
    field_dims: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.task == "ctr":
            if not self.field_dims:
                raise ValueError("a CTR spec needs non-empty field_dims")
            if any(int(d) < 1 for d in self.field_dims):
                raise ValueError(f"field_dims must be positive, got {list(self.field_dims)}")
        elif not self.input_shape or any(int(s) < 1 for s in self.input_shape):
            raise ValueError(
                f"a classification spec needs a positive input_shape, got {self.input_shape}"
            )


def to_spec(meta: Any) -> ModelSpec:
    """Build a :class:`ModelSpec` from a ModelSpec, a Dataset, or any duck-typed object."""
    if isinstance(meta, ModelSpec):
        return meta
    task = getattr(meta, "task", None)
    if task is None:
        raise ValueError(f"{type(meta).__name__} has no 'task' attribute; cannot build a model")
    shape = getattr(meta, "input_shape", None)
    if shape is None:
        x = getattr(meta, "x", None)
        shape = tuple(x.shape[1:]) if x is not None and hasattr(x, "shape") else ()
    field_dims = getattr(meta, "field_dims", None)
    num_classes = getattr(meta, "num_classes", None)
    if num_classes is None:
        num_classes = 2 if task == "ctr" else 0
    return ModelSpec(
        task=str(task),
        input_shape=tuple(int(s) for s in shape),
        num_classes=int(num_classes),
        field_dims=None if field_dims is None else tuple(int(d) for d in field_dims),
    )


Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, tuple[str, Builder]] = {}


def register_model(name: str, task: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(spec: ModelSpec, **kw) -> nn.Module`` under ``name``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def deco(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = (task, builder)
        return builder

    return deco


def list_models(task: str | None = None) -> list[str]:
    """Registered model names (optionally only those for ``task``), sorted."""
    return sorted(n for n, (t, _) in _REGISTRY.items() if task is None or t == task)


def model_task(name: str) -> str:
    """The task ("classification" or "ctr") a registered model solves."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    return _REGISTRY[name][0]


def build_model(name: str, dataset_or_meta: Any, **kwargs: Any) -> nn.Module:
    """Instantiate model ``name`` for the data described by ``dataset_or_meta``.

    Extra keyword arguments go to the model constructor (e.g. ``embedding_dim=16``).
    """
    task = model_task(name)
    spec = to_spec(dataset_or_meta)
    if spec.task != task:
        raise ValueError(f"model {name!r} is a {task} model but the data task is {spec.task!r}")
    return _REGISTRY[name][1](spec, **kwargs)


#: Dataset name -> default model (read from the dataset metadata, :mod:`fedstrat.data.info`).
DEFAULT_MODELS: dict[str, str] = {n: i.default_model for n, i in DATASET_INFO.items()}


def default_model_for(dataset: str | Any) -> str:
    """Default model name for a dataset name (or an object with a ``name`` attribute).

    Unknown names fall back on the task when an object is given: "mlp" for classification,
    "deepfm" for CTR.
    """
    name = dataset if isinstance(dataset, str) else getattr(dataset, "name", None)
    if name in DEFAULT_MODELS:
        return DEFAULT_MODELS[name]
    task = None if isinstance(dataset, str) else getattr(dataset, "task", None)
    if task == "ctr":
        return "deepfm"
    if task == "classification":
        return "mlp"
    raise ValueError(f"no default model for dataset {name!r}; known: {sorted(DEFAULT_MODELS)}")
