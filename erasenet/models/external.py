"""Networks from torchvision and timm, built offline, optionally from a local weights file.

``model=torchvision model.arch=resnet18`` or ``model=timm model.arch=resnet50d``. The network is initialised by
its own library; ``model.weights=PATH`` then loads a local state dict strictly. Nothing is ever downloaded: a
pretrained file must already be on disk (torchvision keeps its downloads in ``$TORCH_HOME/hub/checkpoints``,
timm in the Hugging Face cache, ``$HF_HOME/hub``). These networks declare no ReLU sites; the erase policy finds
them from the network's graph (``erasenet.erase.graph_sites``), counting the activation classes ``activation`` names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from ..erase.graph_sites import resolve_activations
from .registry import register_external

log = logging.getLogger("erasenet")

TIMM_INSTALL = "pip install 'erasenet[timm]' (or pip install timm)"


@register_external
def torchvision(num_classes: int = 1000, in_chans: int = 3, arch: str = "resnet18", weights: str | None = None,
                activation: str | list[str] = "relu") -> nn.Module:
    """A torchvision classification network, e.g. ``resnet50``, ``vgg16_bn``, ``mobilenet_v2`` (with relu6)."""
    import torchvision.models as tvm

    choices = tvm.list_models(module=tvm)
    if arch not in choices:
        raise ValueError(f"model.arch={arch!r} is not a torchvision classification network; choose one of "
                         f"{', '.join(choices)}")
    model = tvm.get_model(arch, weights=None, num_classes=num_classes)
    if in_chans != 3:
        _replace_first_conv(model, in_chans)
    return _finish(model, f"torchvision:{arch}", weights, activation)


@register_external
def timm(num_classes: int = 1000, in_chans: int = 3, arch: str = "resnet50", weights: str | None = None,
         activation: str | list[str] = "relu") -> nn.Module:
    """A timm network, e.g. ``resnet50``, ``resnet50d``, ``regnetx_032``; timm is an optional extra."""
    try:
        import timm as timm_lib
    except ImportError:
        raise ValueError(f"model=timm needs the timm package, which is not installed; install it with "
                         f"{TIMM_INSTALL}") from None
    if not timm_lib.is_model(arch):
        raise ValueError(f"model.arch={arch!r} is not a timm network; list them with "
                         f"python -c 'import timm; print(timm.list_models())'")
    model = timm_lib.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    return _finish(model, f"timm:{arch}", weights, activation)


def _finish(model: nn.Module, label: str, weights: str | None, activation: str | list[str]) -> nn.Module:
    model.site_activations = resolve_activations(activation)
    if weights:
        load_weights(model, weights, label)
    return model


def load_weights(model: nn.Module, weights: str, label: str) -> None:
    """Load the state dict at ``weights`` into ``model`` strictly; a meta-device model (built only to be
    measured) is left as it is."""
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise ValueError(f"model.weights={weights!r} is not a file. erasenet never downloads weights: fetch the "
                         f"file on a machine with internet access (torchvision caches in $TORCH_HOME/hub/"
                         f"checkpoints, timm in $HF_HOME/hub) and pass its local path")
    if any(p.is_meta for p in model.parameters()):
        return
    try:
        if path.suffix == ".safetensors":  # timm's and the Hugging Face hub's format
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with code in it, a truncated file, not a torch file at all
        raise ValueError(f"model.weights={weights!r} cannot be read as a state dict ({err})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise ValueError(f"model.weights={weights!r} does not fit {label} ({detail}); the file must hold exactly "
                         f"this network's tensors, its classifier sized for the dataset's classes") from None
    log.info("loaded weights for %s from %s (%d tensors, strict)", label, path, len(state))


def _replace_first_conv(model: nn.Module, in_chans: int) -> None:
    """Give the network's first convolution ``in_chans`` input channels (a grey-scale data set)."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent_name, _, leaf = name.rpartition(".")
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode, device=conv.weight.device)
    setattr(model.get_submodule(parent_name), leaf, new)
