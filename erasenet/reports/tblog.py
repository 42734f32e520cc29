"""A run's TensorBoard record: scalars under tags every run shares, and an HParams entry with its final metrics.

Train, val and test curves of one metric share a chart (``error/train``, ``error/val``, ``error/test``), and
runs are named by their directories, which are named by their overrides, so ``tensorboard --logdir SWEEP``
overlays the seeds and proportions of a sweep. Each run writes only its own HParams session, no experiment
summary: TensorBoard then derives the experiment from all the sessions it finds and marks the hyperparameters
whose values differ between runs (the swept ones) as differing.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..common.records import override_key, override_value

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
    keys = list(HPARAM_KEYS) + [override_key(o) for o in overrides if "=" in o]
    values = {override_key(o): override_value(o) for o in overrides if "=" in o}
    out: dict[str, Any] = {}
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        # a group choice (model=resnet56) selects a whole node: record the choice, not the node
        out[key] = value if isinstance(value, (bool, int, float, str)) else values.get(key, str(value))
    return out


def write_hparams(writer: Any, cfg: DictConfig, overrides: list[str], result: dict) -> None:
    """Add the run's HParams session (its hyperparameters and final metrics) to its own event directory, so the
    HParams tab lists one row per run."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    metrics = {f"final/{k}": result[k] for k in FINAL_METRICS if result.get(k) is not None}
    # the experiment summary torch writes along would declare every hyperparameter as not differing; without it
    # TensorBoard compares the sessions of all runs itself
    _experiment, session_start, session_end = hparams_summaries(hparams(cfg, overrides), metrics)
    writer.file_writer.add_summary(session_start)
    writer.file_writer.add_summary(session_end)
    for key, value in metrics.items():
        writer.add_scalar(key, value)
