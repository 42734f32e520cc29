"""Model registry: one builder per named zoo entry (registry name = config file name)."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch.nn as nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_EXTERNAL: dict[str, Callable[..., nn.Module]] = {}  # builders of other libraries' networks (torchvision, timm)
_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {}
CIFAR_INPUT = (3, 32, 32)


def register_model(fn: Callable[..., nn.Module] | None = None, *, input_shape: tuple[int, int, int] = CIFAR_INPUT):
    """Decorator: register ``fn`` under its own name; ``input_shape`` (C, H, W) is the input it was designed for.

    Use bare (``@register_model``, CIFAR-sized input) or with ``@register_model(input_shape=(3, 224, 224))``.
    """
    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name], _INPUT_SHAPES[name] = fn, tuple(input_shape)
        return fn

    return register if fn is None else register(fn)


def input_shape(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input the registered model ``name`` was designed for."""
    model_builder(name)
    return _INPUT_SHAPES[name]


def register_external(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a builder of another library's networks (``model=<its name> model.arch=...``).

    External models declare no sites (the erase policy analyses their graph) and stay out of the zoo table.
    """
    if fn.__name__ in _BUILDERS or fn.__name__ in _EXTERNAL:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _EXTERNAL[fn.__name__] = fn
    return fn


def list_models(external: bool = False) -> list[str]:
    """Names of every registered zoo model, sorted; with ``external``, the external builders too."""
    return sorted(_BUILDERS) + (sorted(_EXTERNAL) if external else [])


def model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered under ``name``; a ``KeyError`` that lists the choices otherwise."""
    try:
        return _BUILDERS[name] if name in _BUILDERS else _EXTERNAL[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(list_models(external=True))}") from None


def builder_options(name: str) -> dict[str, Any]:
    """Keyword arguments the builder accepts, with their defaults (``inspect.Parameter.empty`` if none)."""
    params = inspect.signature(model_builder(name)).parameters
    return {k: p.default for k, p in params.items() if p.kind is not p.VAR_KEYWORD}


def create_model(name: str, num_classes: int = 10, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; unknown keyword arguments raise ``TypeError``."""
    return model_builder(name)(num_classes=num_classes, in_chans=in_chans, **kwargs)
