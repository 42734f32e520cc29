"""A run's TensorBoard record: scalars under tags every run shares, and an HParams entry with its final metrics.

Train, val and test curves of one metric share a chart (``error/train``, ``error/val``, ``error/test``), and
runs are named by their directories, which are named by their overrides, so ``tensorboard --logdir SWEEP``
overlays the seeds and proportions of a sweep.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

SPLITS = ("train", "val", "test")
# Config keys every run's HParams entry carries, whether or not the command line set them.
HPARAM_KEYS = ("model.name", "dataset.name", "erase.location", "erase.proportion", "erase.replace", "seed",
               "schedule.epochs", "schedule.lr", "schedule.batch_size")
FINAL_METRICS = ("test_error", "best_val_error", "test_error_at_best_val", "train_error")


def scalar_tag(key: str) -> str:
    """``train_error`` -> ``error/train``, ``val_loss`` -> ``loss/val``; other keys (``lr``, ``images_per_s``) as is."""
    split, _, metric = key.partition("_")
    return f"{metric}/{split}" if split in SPLITS and metric in ("loss", "error") else key


def hparams(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """The run's hyperparameters: the fixed keys above plus every key its command line overrode."""
    keys = list(HPARAM_KEYS) + [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    values = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    out: dict[str, Any] = {}
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        # a group choice (model=resnet56) selects a whole node: record the choice, not the node
        out[key] = value if isinstance(value, (bool, int, float, str)) else values.get(key, str(value))
    return out


def write_hparams(writer: Any, cfg: DictConfig, overrides: list[str], result: dict) -> None:
    """Add the HParams entry to the run's own event directory, so the HParams tab lists one row per run."""
    metrics = {f"final/{k}": result[k] for k in FINAL_METRICS if result.get(k) is not None}
    writer.add_hparams(hparams(cfg, overrides), metrics, run_name=".")
