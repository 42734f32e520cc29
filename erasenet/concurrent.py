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
run alone: each member is a ``run.Run`` view of the batch (its own plain model,
loader and directory, the shared stacked optimizer), so its epoch records,
checkpoints (its own slice of the optimizer state), logs and ``result.json`` come
from the same functions as a single run's. Evaluation copies a member's weights
into its plain model and uses ``engine.evaluate``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from torch.func import functional_call, stack_module_state, vmap

from .accel import build_accel, prepare_model, to_channels_last
from .checkpoint import check_writable, list_checkpoints
from .config import IMAGE_FOLDER_DATASETS
from .data import TensorLoader, build_loaders
from .distributed import Dist
from .engine import NonFiniteLoss, build_optimizer, build_scheduler, resolve_device, train_one_epoch
from .errors import UserError
from .run import (Run, RunFiles, TrainState, build_model, checkpoint_state, configure_torch, count_macs, disk_needed,
                  epoch_record, finished_result, make_result, process_schedule, progress_enabled, seed_everything,
                  train_run)

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




@dataclass
class Member:
    """One seed of a batch: a view of the batch as that seed's own run (its plain model, its loader, its
    directory), its progress, its files and its log."""

    run: Run
    state: TrainState
    files: RunFiles
    config: dict
    log: logging.Logger
    overrides: list[str]
    group: str


def train_concurrent(cfgs: Sequence[DictConfig], out_dirs: Sequence[Path], overrides: Sequence[list[str]] = (),
                     groups: Sequence[str] = ()) -> list[dict]:
    """Train the seeds ``cfgs`` (equal but for ``seed``) together; write and return each one's ``result.json``.

    A seed whose run directory already holds its result (``trainer.skip_finished``) or checkpoints to continue
    from (``trainer.resume=auto``) goes through ``run.train_run`` alone, which returns or resumes it; so does a
    seed left on its own, and every seed of an ImageFolder dataset. The rest train together.
    """
    check_members(cfgs)
    out_dirs = [Path(out) for out in out_dirs]
    overrides = [list(o) for o in overrides] or [[] for _ in cfgs]
    groups = list(groups) or ["" for _ in cfgs]
    together = [k for k, (c, out) in enumerate(zip(cfgs, out_dirs))
                if c.dataset.name not in IMAGE_FOLDER_DATASETS and not begun(c, out)]
    results = {}
    if len(together) > 1:
        results = dict(zip(together, train_together([cfgs[k] for k in together], [out_dirs[k] for k in together],
                                                    [overrides[k] for k in together], [groups[k] for k in together])))
    for k, (c, out) in enumerate(zip(cfgs, out_dirs)):
        if k not in results:
            with log_file(log, out):
                results[k] = train_run(c, out, overrides[k], groups[k])
    return [results[k] for k in range(len(cfgs))]


def begun(cfg: DictConfig, out_dir: Path) -> bool:
    """Whether ``out_dir`` holds checkpoints to resume or the finished result of this config."""
    if cfg.trainer.resume == "never":
        return False
    return bool(list_checkpoints(out_dir)) or (
        cfg.trainer.skip_finished and finished_result(out_dir, OmegaConf.to_container(cfg, resolve=True)) is not None)


@contextlib.contextmanager
def log_file(logger: logging.Logger, out_dir: Path) -> Iterator[logging.Logger]:
    """Also write ``logger``'s records to ``out_dir/train.log``, where a run launched alone logs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        handler.close()


def train_together(cfgs: Sequence[DictConfig], out_dirs: Sequence[Path], overrides: Sequence[list[str]],
                   groups: Sequence[str]) -> list[dict]:
    """Train fresh seeds as one stacked model; each member's directory gets what ``train_run`` writes alone."""
    start = time.perf_counter()
    cfg, k_members, seeds = cfgs[0], len(cfgs), [c.seed for c in cfgs]
    configure_torch(cfg.trainer)
    device = resolve_device(cfg.trainer.device)
    d, s = cfg.dataset, process_schedule(cfg.schedule, 1)
    train0, eval_loaders, sizes = build_loaders(d, s, device=device, seed=cfg.seed)
    models, records = [], []
    for c in cfgs:  # the same construction order as train_run: each member starts from its own seed's weights
        seed_everything(c.seed)
        model, record = build_model(c)
        models.append(model.to(device))
        records.append(record)
    params, macs = sum(p.numel() for p in models[0].parameters()), count_macs(cfg)
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
    scheduler = build_scheduler(optimizer, s, len(train0))
    t = cfg.trainer
    with contextlib.ExitStack() as exits:
        members = []
        for c, out, model, record, o, g in zip(cfgs, out_dirs, models, records, overrides, groups):
            run = Run(c, out, Dist(), device, net.module, model, record, optimizer, scheduler,
                      with_seed(train0, c.seed), eval_loaders, sizes, params, macs, accel, net)
            check_writable(out, disk_needed(run))
            member_log = logging.getLogger(f"erasenet.seed{c.seed}")
            member_log.propagate, member_log.level = False, logging.INFO  # its own train.log, not the console
            exits.enter_context(log_file(member_log, out))
            files = RunFiles(out, enabled=True, tensorboard=t.tensorboard)
            exits.callback(files.close)
            state = TrainState()
            files.open(c, record, state)
            member_log.info("%s: %s parameters on %s, trained together with seeds %s; train/val/test = %d/%d/%d "
                            "images", cfg.model.name, f"{params:,}", device, seeds, sizes["train"], sizes["val"],
                            sizes["test"])
            member_log.info(record.summary())
            member_log.info("%s, compile %s", accel.describe(), "on" if net.compiled else "off")
            members.append(Member(run, state, files, OmegaConf.to_container(c, resolve=True), member_log, o, g))
        status, failure = fit_together(members, stack, net.module, start)
        wall = time.perf_counter() - start
        results = []
        for m in members:
            result = make_result(m.run, m.state, status, failure, m.config, m.overrides, m.group,
                                 seconds=wall / k_members)
            result["concurrent"] = {"seeds": seeds, "wall_seconds": wall}
            m.files.write_result(result, m.run.cfg, m.overrides)
            results.append(result)
    log.info("done: seeds %s, test error %s%% -> %s", seeds,
             " ".join("n/a" if r["test_error"] is None else f"{r['test_error']:.2f}" for r in results),
             Path(out_dirs[0]).parent)
    return results


def fit_together(members: Sequence[Member], stack: StackedModels, net: nn.Module,
                 start: float) -> tuple[str, str | None]:
    """Train the stack for every epoch; after each, each member evaluates, logs and checkpoints as ``run.fit``
    does. The status (``ok``/``failed``) and the failure, if any."""
    first = members[0].run
    optimizer, t, epochs = first.optimizer, first.cfg.trainer, first.cfg.schedule.epochs
    loader = StackedLoader([m.run.train_loader for m in members])
    seeds = [m.run.cfg.seed for m in members]
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        try:
            train = train_one_epoch(net, loader, optimizer, first.scheduler, epoch=epoch,
                                    progress=progress_enabled(t.progress), accel=first.accel)
        except NonFiniteLoss as err:
            failure = f"{err} (in one of the seeds {seeds}, trained together)"
            log.error("%s; stopping these runs (their last good checkpoints are kept).", failure)
            return "failed", failure
        seconds = (time.perf_counter() - start) / len(members)
        records = []
        for k, m in enumerate(members):
            stack.copy_into(k, m.run.module)
            record = epoch_record(m.run, epoch, {**train, "loss": train["loss"][k], "error": train["error"][k]},
                                  logger=m.log)
            m.state.finish_epoch(record)
            m.files.log_epoch(record)
            if t.checkpoint:
                m.files.save_checkpoint(checkpoint_state(m.run, m.state, m.config, seconds,
                                                         member_optimizer_state(optimizer, k)), t.keep_checkpoints)
            records.append(record)
        split = "val" if "val_error" in records[0] else "test"
        log.info("epoch %d/%d  lr %.4g  %s err per seed %s  %.1fs (%.0f img/s per seed, %d seeds)", epoch + 1,
                 epochs, records[0]["lr"], split, " ".join(f"{r[f'{split}_error']:.2f}" for r in records),
                 train["seconds"], train["images_per_s"], len(members))
    return "ok", None
