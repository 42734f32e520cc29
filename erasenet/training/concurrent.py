"""K models of one architecture trained as one module: the stacking behind ``trainer.concurrent``.

The K models (same architecture and erase policy, different seeds) become one module whose parameters and
batch-norm buffers are the members' stacked along a new leading dimension; ``torch.func.vmap`` runs
``functional_call`` of the shared architecture over that dimension, so every layer is one batched kernel instead
of K small ones. Batch-norm running statistics are stacked buffers passed as batched inputs, so each member
updates its own in place. SGD is elementwise, so one optimizer over the stacked parameters is exactly K
independent optimizers, and the sum of the members' losses gives each member its own gradient.

A model that draws random numbers in training (dropout, stochastic depth) cannot be batched and stay exact:
a member alone draws from the global generator in its own order. Such a stack runs its members one after another
in training, each with its own generator state swapped in, so every member draws what it would draw alone.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Sequence

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from torch.func import functional_call, stack_module_state, vmap

from ..data import TensorLoader
from ..common.errors import UserError


def draws_random(model: nn.Module) -> bool:
    """Whether ``model`` draws random numbers in training: dropout, or a module that says so
    (``random_in_training``, e.g. a block with stochastic depth)."""
    return any(getattr(m, "random_in_training", False)
               or (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0) for m in model.modules())


def generator_state(device: torch.device) -> dict:
    """The global torch generators a model draws from on ``device``: the CPU one, and the GPU's on CUDA."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


@contextlib.contextmanager
def own_generator(state: dict, device: torch.device) -> Iterator[None]:
    """Draw from ``state`` (updated in place) instead of the global generators for the time of the block."""
    saved = generator_state(device)
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    try:
        yield
    finally:
        state.update(generator_state(device))
        torch.set_rng_state(saved["torch"])
        if saved["cuda"] is not None:
            torch.cuda.set_rng_state(saved["cuda"], device)


class StackedModels(nn.Module):
    """K models of one architecture as one module taking K x B batches and giving K x B x classes logits.

    ``generators``: each member's generator state (see :func:`generator_state`), drawn from when the models
    draw random numbers in training.
    """

    def __init__(self, models: Sequence[nn.Module], generators: Sequence[dict] = ()):
        super().__init__()
        params, buffers = stack_module_state(list(models))
        # Parameter and buffer names may not contain dots: keep the members' names alongside.
        self.param_names, self.buffer_names = list(params), list(buffers)
        self.stacked = nn.ParameterList(params.values())
        for i, b in enumerate(buffers.values()):
            self.register_buffer(f"buffer{i}", b)
        # The shared architecture, without storage of its own; not a submodule, so it adds no parameters.
        self.__dict__["skeleton"] = copy.deepcopy(models[0]).to("meta")
        self.size = len(models)
        self.random = draws_random(models[0])
        self.generators = [dict(g) for g in generators]
        if self.random and len(self.generators) != self.size:
            raise ValueError("models that draw random numbers in training need one generator state per member")

    def named_member_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The stacked parameters, in ``parameters()`` order, by their names in a member model."""
        return list(zip(self.param_names, self.stacked))

    def _state(self) -> tuple[dict, dict]:
        buffers = {n: getattr(self, f"buffer{i}") for i, n in enumerate(self.buffer_names)}
        return dict(zip(self.param_names, self.stacked)), buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.skeleton.train(self.training)
        params, buffers = self._state()
        if self.training and self.random:
            return torch.stack([self._member_forward(k, params, buffers, x[k]) for k in range(self.size)])
        return vmap(lambda p, b, xi: functional_call(self.skeleton, (p, b), (xi,)))(params, buffers, x)

    def _member_forward(self, k: int, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        member = ({n: p[k] for n, p in params.items()}, {n: b[k] for n, b in buffers.items()})
        with own_generator(self.generators[k], x.device):
            return functional_call(self.skeleton, member, (x,))

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

    @torch.no_grad()
    def copy_from(self, k: int, model: nn.Module) -> None:
        """Make member ``k`` the weights and buffers of ``model`` (same architecture)."""
        state = self.member_state(k)
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            state[name].copy_(t)


def member_optimizer_state(optimizer: torch.optim.Optimizer, k: int) -> dict:
    """The state dict member ``k``'s own optimizer would have (each stacked tensor's slice ``k``)."""
    state = optimizer.state_dict()
    sliced = {i: {key: (v[k].clone() if torch.is_tensor(v) and v.dim() > 0 else v) for key, v in s.items()}
              for i, s in state["state"].items()}
    return {"state": sliced, "param_groups": state["param_groups"]}


def stacked_optimizer_state(states: Sequence[dict]) -> dict:
    """The stacked optimizer's state dict from its members' own (the inverse of :func:`member_optimizer_state`)."""
    first = states[0]
    stacked = {i: {key: (torch.stack([s["state"][i][key] for s in states]) if torch.is_tensor(v) and v.dim() > 0
                         else v) for key, v in per_param.items()}
               for i, per_param in first["state"].items()}
    return {"state": stacked, "param_groups": first["param_groups"]}


class StackedLoader:
    """Zip the members' loaders: each yields its own batch; they are stacked to K x B."""

    def __init__(self, loaders: Sequence[TensorLoader]):
        self.loaders = list(loaders)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        for loader in self.loaders:
            loader.set_epoch(epoch, start_batch)

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
    """Runs trained together must differ in their seed only."""
    def strip(c: DictConfig) -> dict:
        d = OmegaConf.to_container(c, resolve=True)
        d.pop("seed")
        return d

    first = strip(cfgs[0])
    if any(strip(c) != first for c in cfgs[1:]) or len({c.seed for c in cfgs}) != len(cfgs):
        raise UserError("runs trained together (trainer.concurrent) must differ in their seed only, and each seed "
                        "must appear once. Sweep other keys (e.g. erase.proportion) as usual: the launcher groups "
                        "the seeds of each configuration.")
