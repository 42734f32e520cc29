"""The network a finished run delivers, rebuilt in Python from its run directory with one call.

``load_model(run_dir)`` reads the run's recorded config (``result.json``, else its newest checkpoint's), builds
the configured network as training did (model, then erase policy: gates and PReLUs shaped alike), loads the
weights of its newest checkpoint (the final epoch of a finished run: binarised gates, erased sites, PReLU slopes)
and returns it in evaluation mode on the CPU, with what a consumer needs to feed it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn
from omegaconf import OmegaConf

from ..common.errors import UserError
from .build import build_model, image_shape
from .checkpoint import load_latest
from .resume import with_defaults


@dataclass
class DeliveredModel:
    """A run's final network and what it was trained on."""

    model: nn.Module  # evaluation mode, CPU
    config: dict  # the run's resolved config, absent keys filled with their defaults
    input_shape: tuple[int, int, int]  # (C, H, W) of one image
    mean: list[float]  # the normalisation the training loader applied: (x / 255 - mean) / std
    std: list[float]
    checkpoint: Path  # the weights it holds
    result: dict | None  # result.json, when the run finished


def load_model(run_dir: str | Path) -> DeliveredModel:
    """The final network of the run in ``run_dir``; ``UserError`` when the directory holds no run or no weights."""
    run_dir = Path(run_dir)
    result = None
    if (run_dir / "result.json").is_file():
        try:
            result = json.loads((run_dir / "result.json").read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{run_dir / 'result.json'} is not valid JSON ({err}); the run's record is damaged.") \
                from None
    found = load_latest(run_dir)
    if found is None:
        raise UserError(f"{run_dir} holds no readable checkpoint (checkpoints/epoch*.pt), so there are no weights "
                        "to load. Point at a run directory that has trained at least one epoch.")
    ckpt, path = found
    config = with_defaults((result or {}).get("config") or ckpt["config"])
    cfg = OmegaConf.create(config)
    model, _ = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    d = cfg.dataset
    return DeliveredModel(model=model, config=config, input_shape=image_shape(cfg), mean=list(d.mean or []),
                          std=list(d.std or []), checkpoint=path, result=result)
