"""Build everything one run needs from its config, train it, and write the run's files."""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from . import __version__
from .checkpoint import save_checkpoint, save_json
from .accel import accel_record, build_accel, prepare_model, sample_shapes
from .config import MODEL_META_KEYS
from .data import build_loaders
from .engine import NonFiniteLoss, build_optimizer, build_scheduler, evaluate, resolve_device, train_one_epoch
from .erase import EraseRecord, ErasePolicy, apply_erase
from .errors import UserError
from .models import builder_options, create_model, list_models

log = logging.getLogger("erasenet")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: DictConfig) -> tuple[nn.Module, EraseRecord]:
    """Create the configured model (initialised by its builder) and apply the erase policy to it."""
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    name = spec["name"]
    kwargs = {k: v for k, v in spec.items() if k not in MODEL_META_KEYS}
    if name not in list_models():
        raise UserError(f"model.name={name!r} is not a registered model. Choose one of: {', '.join(list_models())}.")
    accepted = builder_options(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UserError(f"model {name} takes no option {', '.join(unknown)}. Its options are: "
                        f"{', '.join(k for k in accepted if k not in ('num_classes', 'in_chans'))}.")
    try:
        model = create_model(name, num_classes=cfg.dataset.num_classes, in_chans=cfg.dataset.in_chans, **kwargs)
        record = apply_erase(model, ErasePolicy(**OmegaConf.to_container(cfg.erase)))
    except ValueError as err:
        raise UserError(f"cannot build model {name}: {err}.") from None
    return model, record


def progress_enabled(setting: str) -> bool:
    if setting == "auto":
        return sys.stderr.isatty() and not os.environ.get("CI")
    return setting == "on"


def library_versions() -> dict:
    import torchvision

    return {"erasenet": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def train_run(cfg: DictConfig, out_dir: Path, overrides: list[str] = (), group: str = "") -> dict:
    """Train one configuration into ``out_dir``; return (and write) its ``result.json`` record."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    torch.backends.cudnn.deterministic = cfg.trainer.deterministic
    torch.backends.cudnn.benchmark = not cfg.trainer.deterministic
    device = resolve_device(cfg.trainer.device)

    d, s = cfg.dataset, cfg.schedule
    train_loader, eval_loaders, sizes = build_loaders(d, s, device=device, seed=cfg.seed)
    seed_everything(cfg.seed)
    model, record = build_model(cfg)
    model.to(device)
    params = sum(p.numel() for p in model.parameters())
    log.info("%s: %s parameters on %s; train/val/test = %d/%d/%d images", cfg.model.name, f"{params:,}", device,
             sizes["train"], sizes["val"], sizes["test"])
    log.info(record.summary())

    accel = build_accel(cfg.trainer, device)
    net = prepare_model(model, cfg.trainer, accel, sample_shapes(cfg))
    log.info("%s, compile %s", accel.describe(), "on" if net.compiled else "off")
    optimizer = build_optimizer(model, s)
    scheduler = build_scheduler(optimizer, s, len(train_loader))

    writer = None
    if cfg.trainer.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))
        writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")
        writer.add_text("erase", record.summary())
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    best = {"val_error": None, "epoch": None, "test_error": None}
    status, failure, last = "ok", None, {}
    progress = progress_enabled(cfg.trainer.progress)
    with open(out_dir / "metrics.jsonl", "w") as metrics_file:
        for epoch in range(s.epochs):
            train_loader.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            try:
                train = train_one_epoch(net.module, train_loader, optimizer, scheduler, epoch=epoch,
                                        progress=progress, accel=accel)
            except NonFiniteLoss as err:
                status, failure = "failed", str(err)
                log.error("%s; stopping this run.", err)
                break
            evals = {k: evaluate(net.module, loader, accel=accel)
                     for k, loader in eval_loaders.items() if loader is not None}
            last = {"epoch": epoch + 1, "lr": lr, "train_loss": train["loss"], "train_error": train["error"],
                    "images_per_s": train["images_per_s"], "seconds": train["seconds"]}
            for split, m in evals.items():
                last[f"{split}_loss"], last[f"{split}_error"] = m["loss"], m["error"]
            if "val" in evals and (best["val_error"] is None or evals["val"]["error"] < best["val_error"]):
                best = {"val_error": evals["val"]["error"], "epoch": epoch + 1, "test_error": evals["test"]["error"]}
            metrics_file.write(json.dumps(last) + "\n")
            metrics_file.flush()
            if writer:
                for key, value in last.items():
                    if key != "epoch":
                        writer.add_scalar(key.replace("_", "/", 1) if "_" in key else key, value, epoch + 1)
            log.info("epoch %d/%d  lr %.4g  train loss %.3f err %.2f%%  %s  %.1fs (%.0f img/s)", epoch + 1, s.epochs,
                     lr, train["loss"], train["error"],
                     "  ".join(f"{k} err {m['error']:.2f}%" for k, m in evals.items()), train["seconds"],
                     train["images_per_s"])
    if writer:
        writer.close()

    if cfg.trainer.checkpoint and status == "ok":
        save_checkpoint(out_dir / "checkpoint.pt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": s.epochs, "config": OmegaConf.to_container(cfg, resolve=True), "erase": record.as_dict()})
    result = {
        "status": status, "failure": failure, "seed": cfg.seed, "model": cfg.model.name, "dataset": d.name,
        "group": group, "overrides": list(overrides), "epochs": last.get("epoch", 0),
        "test_error": last.get("test_error"), "test_loss": last.get("test_loss"),
        "val_error": last.get("val_error"), "train_error": last.get("train_error"),
        "best_val_error": best["val_error"], "best_epoch": best["epoch"],
        "test_error_at_best_val": best["test_error"],
        "selection": "best epoch on val, test reported" if sizes["val"] else "none (dataset.val_size=0)",
        "splits": sizes,
        "params": params, "erased": record.sites, "erase": record.as_dict(), "device": str(device),
        "seconds": time.perf_counter() - start, "versions": library_versions(),
        "accel": accel_record(accel, net),
    }
    save_json(out_dir / "result.json", result)
    log.info("done: test error %s%%, best val error %s%% (epoch %s) -> %s", _fmt(result["test_error"]),
             _fmt(best["val_error"]), best["epoch"], out_dir)
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
