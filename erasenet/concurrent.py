"""Train K seeds of one configuration together, in one process, as one stacked model.

The K models (same architecture, same erase policy, different seeds) become one
module whose parameters and batch-norm buffers are the members' stacked along a
new leading dimension; ``torch.func.vmap`` runs ``functional_call`` of the shared
architecture over that dimension, so every layer is one batched kernel instead of
K small ones. Batch-norm running statistics are stacked buffers passed as batched
inputs, so each member updates its own in place. SGD is elementwise, so one
optimizer over the stacked parameters is exactly K independent optimizers, and
the sum of the members' losses gives each member its own gradient.

Each member keeps its own data order and augmentation (its own seed's
``TensorLoader``) and writes its own ordinary run directory, exactly as if it had
run alone; evaluation copies a member's weights into a plain model and uses
``engine.evaluate``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from torch.func import functional_call, stack_module_state, vmap

from .accel import accel_record, build_accel, prepare_model, to_channels_last
from .checkpoint import save_checkpoint, save_json
from .data import TensorLoader, build_loaders
from .engine import NonFiniteLoss, build_optimizer, build_scheduler, evaluate, resolve_device, train_one_epoch
from .erase import EraseRecord
from .errors import UserError
from .run import build_model, library_versions, progress_enabled, seed_everything

log = logging.getLogger("erasenet")


class StackedModels(nn.Module):
    """K models of one architecture as one module taking K x B batches and giving K x B x classes logits."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        params, buffers = stack_module_state(list(models))
        # Parameter and buffer names may not contain dots: keep the members' names alongside.
        self.param_names, self.buffer_names = list(params), list(buffers)
        self.stacked = nn.ParameterList(params.values())
        for i, b in enumerate(buffers.values()):
            self.register_buffer(f"buffer{i}", b)
        # The shared architecture, without storage of its own; not a submodule, so it adds no parameters.
        self.__dict__["skeleton"] = copy.deepcopy(models[0]).to("meta")
        self.members = len(models)

    def _state(self) -> tuple[dict, dict]:
        buffers = {n: getattr(self, f"buffer{i}") for i, n in enumerate(self.buffer_names)}
        return dict(zip(self.param_names, self.stacked)), buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.skeleton.train(self.training)
        params, buffers = self._state()
        return vmap(lambda p, b, xi: functional_call(self.skeleton, (p, b), (xi,)))(params, buffers, x)

    @torch.no_grad()
    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member ``k``'s parameters and buffers by their names in the member model."""
        params, buffers = self._state()
        return {n: t[k] for n, t in {**params, **buffers}.items()}

    @torch.no_grad()
    def copy_into(self, k: int, model: nn.Module) -> nn.Module:
        """Write member ``k``'s current weights and buffers into ``model`` (same architecture)."""
        state = self.member_state(k)
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            t.copy_(state[name])
        return model


def member_optimizer_state(optimizer: torch.optim.Optimizer, k: int) -> dict:
    """The state dict member ``k``'s own optimizer would have (each stacked tensor's slice ``k``)."""
    state = optimizer.state_dict()
    sliced = {i: {key: (v[k].clone() if torch.is_tensor(v) and v.dim() > 0 else v) for key, v in s.items()}
              for i, s in state["state"].items()}
    return {"state": sliced, "param_groups": state["param_groups"]}


class StackedLoader:
    """Zip the members' loaders: each yields its own batch; they are stacked to K x B."""

    def __init__(self, loaders: Sequence[TensorLoader]):
        self.loaders = list(loaders)

    def set_epoch(self, epoch: int) -> None:
        for loader in self.loaders:
            loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batches in zip(*self.loaders):
            yield torch.stack([x for x, _ in batches]), torch.stack([y for _, y in batches])


def with_seed(loader: TensorLoader, seed: int) -> TensorLoader:
    """A loader over the same on-device split with another seed's order and augmentation (no data copied)."""
    other = copy.copy(loader)
    other.seed = seed
    return other


class MemberFiles:
    """A member's run directory: the same files, in the same format, as ``run.train_run`` writes."""

    def __init__(self, cfg: DictConfig, out_dir: Path, record: EraseRecord):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log = logging.getLogger(f"erasenet.seed{cfg.seed}")
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        self.handler = logging.FileHandler(self.out_dir / "train.log")
        self.handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        self.log.addHandler(self.handler)
        self.writer = None
        if cfg.trainer.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tb"))
            self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")
            self.writer.add_text("erase", record.summary())
        (self.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        self.metrics = open(self.out_dir / "metrics.jsonl", "w")
        self.best = {"val_error": None, "epoch": None, "test_error": None}
        self.last: dict = {}

    def epoch(self, epoch: int, epochs: int, lr: float, train: dict, evals: dict) -> None:
        last = {"epoch": epoch + 1, "lr": lr, "train_loss": train["loss"], "train_error": train["error"],
                "images_per_s": train["images_per_s"], "seconds": train["seconds"]}
        for split, m in evals.items():
            last[f"{split}_loss"], last[f"{split}_error"] = m["loss"], m["error"]
        if "val" in evals and (self.best["val_error"] is None or evals["val"]["error"] < self.best["val_error"]):
            self.best = {"val_error": evals["val"]["error"], "epoch": epoch + 1, "test_error": evals["test"]["error"]}
        self.metrics.write(json.dumps(last) + "\n")
        self.metrics.flush()
        if self.writer:
            for key, value in last.items():
                if key != "epoch":
                    self.writer.add_scalar(key.replace("_", "/", 1) if "_" in key else key, value, epoch + 1)
        self.log.info("epoch %d/%d  lr %.4g  train loss %.3f err %.2f%%  %s  %.1fs (%.0f img/s)", epoch + 1, epochs,
                      lr, train["loss"], train["error"],
                      "  ".join(f"{k} err {m['error']:.2f}%" for k, m in evals.items()), train["seconds"],
                      train["images_per_s"])
        self.last = last

    def close(self) -> None:
        self.metrics.close()
        if self.writer:
            self.writer.close()
        self.log.removeHandler(self.handler)
        self.handler.close()


def _member_slice(train: dict, k: int) -> dict:
    return {**train, "loss": train["loss"][k], "error": train["error"][k]}


def check_members(cfgs: Sequence[DictConfig]) -> None:
    """Members must differ in their seed only."""
    def strip(c: DictConfig) -> dict:
        d = OmegaConf.to_container(c, resolve=True)
        d.pop("seed")
        return d

    first = strip(cfgs[0])
    if any(strip(c) != first for c in cfgs[1:]) or len({c.seed for c in cfgs}) != len(cfgs):
        raise UserError("runs trained together (trainer.concurrent) must differ in their seed only, and each seed "
                        "must appear once. Sweep other keys (e.g. erase.proportion) as usual: the launcher groups "
                        "the seeds of each configuration.")


def train_concurrent(cfgs: Sequence[DictConfig], out_dirs: Sequence[Path], overrides: Sequence[list[str]] = (),
                     groups: Sequence[str] = ()) -> list[dict]:
    """Train the seeds ``cfgs`` (equal but for ``seed``) together; write and return each one's ``result.json``."""
    start = time.perf_counter()
    check_members(cfgs)
    cfg, k_members = cfgs[0], len(cfgs)
    overrides = list(overrides) or [[] for _ in cfgs]
    groups = list(groups) or ["" for _ in cfgs]
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    torch.backends.cudnn.deterministic = cfg.trainer.deterministic
    torch.backends.cudnn.benchmark = not cfg.trainer.deterministic
    device = resolve_device(cfg.trainer.device)
    d, s = cfg.dataset, cfg.schedule

    train0, eval_loaders, sizes = build_loaders(d, s, device=device, seed=cfg.seed)
    loader = StackedLoader([train0] + [with_seed(train0, c.seed) for c in cfgs[1:]])
    models, records = [], []
    for c in cfgs:  # the same construction order as train_run: each member starts from its own seed's weights
        seed_everything(c.seed)
        model, record = build_model(c)
        models.append(model.to(device))
        records.append(record)
    params = sum(p.numel() for p in models[0].parameters())
    seeds = [c.seed for c in cfgs]
    log.info("%s x %d seeds (%s) trained together: %s parameters each on %s; train/val/test = %d/%d/%d images",
             cfg.model.name, k_members, ", ".join(map(str, seeds)), f"{params:,}", device, sizes["train"],
             sizes["val"], sizes["test"])

    accel = build_accel(cfg.trainer, device)
    stack = StackedModels(models)
    image = (d.in_chans, d.image_size, d.image_size)
    # channels_last has no meaning for the stacked (5-d) weights; it applies to the members' evaluation models
    net = prepare_model(stack, cfg.trainer, accel, [((k_members, s.batch_size, *image), True)])
    for model in models:
        to_channels_last(model, accel)
    optimizer = build_optimizer(stack, s)
    scheduler = build_scheduler(optimizer, s, len(loader))
    files = [MemberFiles(c, out, r) for c, out, r in zip(cfgs, out_dirs, records)]
    for f, r in zip(files, records):
        f.log.info("%s: %s parameters on %s, trained together with seeds %s; train/val/test = %d/%d/%d images",
                   cfg.model.name, f"{params:,}", device, seeds, sizes["train"], sizes["val"], sizes["test"])
        f.log.info(r.summary())
        f.log.info("%s, compile %s", accel.describe(), "on" if net.compiled else "off")

    status, failure = "ok", None
    progress = progress_enabled(cfg.trainer.progress)
    try:
        for epoch in range(s.epochs):
            loader.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            try:
                train = train_one_epoch(net.module, loader, optimizer, scheduler, epoch=epoch, progress=progress,
                                        accel=accel)
            except NonFiniteLoss as err:
                status, failure = "failed", f"{err} (in one of the seeds {seeds}, trained together)"
                log.error("%s; stopping these runs.", failure)
                break
            errors = []
            for k, (model, f) in enumerate(zip(models, files)):
                stack.copy_into(k, model)
                evals = {n: evaluate(model, ld, accel=accel) for n, ld in eval_loaders.items() if ld is not None}
                f.epoch(epoch, s.epochs, lr, _member_slice(train, k), evals)
                errors.append(evals.get("val", evals["test"])["error"])
            log.info("epoch %d/%d  lr %.4g  %s err per seed %s  %.1fs (%.0f img/s per seed, %d seeds)", epoch + 1,
                     s.epochs, lr, "val" if eval_loaders.get("val") else "test",
                     " ".join(f"{e:.2f}" for e in errors), train["seconds"], train["images_per_s"], k_members)
    finally:
        for f in files:
            f.close()

    seconds = (time.perf_counter() - start) / k_members
    results = []
    for k, (c, f, record, model) in enumerate(zip(cfgs, files, records, models)):
        if c.trainer.checkpoint and status == "ok":
            save_checkpoint(f.out_dir / "checkpoint.pt", {
                "model": model.state_dict(), "optimizer": member_optimizer_state(optimizer, k),
                "scheduler": scheduler.state_dict(), "epoch": s.epochs,
                "config": OmegaConf.to_container(c, resolve=True), "erase": record.as_dict()})
        last, best = f.last, f.best
        result = {
            "status": status, "failure": failure, "seed": c.seed, "model": c.model.name, "dataset": d.name,
            "group": groups[k], "overrides": list(overrides[k]), "epochs": last.get("epoch", 0),
            "test_error": last.get("test_error"), "test_loss": last.get("test_loss"),
            "val_error": last.get("val_error"), "train_error": last.get("train_error"),
            "best_val_error": best["val_error"], "best_epoch": best["epoch"],
            "test_error_at_best_val": best["test_error"],
            "selection": "best epoch on val, test reported" if sizes["val"] else "none (dataset.val_size=0)",
            "splits": sizes,
            "params": params, "erased": record.sites, "erase": record.as_dict(), "device": str(device),
            "seconds": seconds, "versions": library_versions(),
            "accel": accel_record(accel, net), "concurrent": {"seeds": seeds, "wall_seconds": seconds * k_members},
        }
        save_json(f.out_dir / "result.json", result)
        results.append(result)
    log.info("done: seeds %s, test error %s%% -> %s", seeds,
             " ".join("n/a" if r["test_error"] is None else f"{r['test_error']:.2f}" for r in results),
             Path(out_dirs[0]).parent)
    return results
