"""The model zoo: every family registers its builders on import."""

# registration on import
from . import dfn, external, inception, mlp, plain, resnet18_cifar, resnet_cifar, resnet_imagenet  # noqa: F401
from ..erase.sites import Block, block_sites, declared_sites, fixed_sites, iter_blocks
from .registry import (builder_options, create_model, input_shape, list_models, model_builder, register_external,
                       register_model)

__all__ = [
    "Block", "block_sites", "builder_options", "create_model", "declared_sites", "fixed_sites", "input_shape",
    "iter_blocks", "list_models", "model_builder", "register_external", "register_model",
]
