"""What an erased site becomes: the table of ``erase.replace`` values.

Each entry makes the module put where a ReLU was and, where that module's size depends on the tensor it sees,
fits it once the swap is done (one forward pass on the meta device shows the shapes: a site's channel count is
known only once a forward pass reaches it; a shared module's calls and functional ReLUs have no module of their
own to ask before erasing, their new modules do). The names and their meanings live in
``erasenet.common.choices.REPLACEMENTS`` (validated before torch is imported); this table builds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch.nn as nn

from ..common.choices import REPLACEMENTS as NAMES
from .polynomial import Polynomial, shape_polynomials
from .rectifiers import shapes_seen

Fit = Callable[[nn.Module, list[nn.Module], Sequence[int]], None]


@dataclass(frozen=True)
class Replacement:
    """``make()``: a fresh module for one site; ``fit(model, made, input_shape)``: size the modules made, in
    place, from the shapes one forward pass of one ``input_shape`` input shows them (None: nothing to size)."""

    make: Callable[[], nn.Module]
    fit: Fit | None = None

    @property
    def needs_input_shape(self) -> bool:
        return self.fit is not None


def slope_per_channel(model: nn.Module, prelus: list[nn.Module], input_shape: Sequence[int]) -> None:
    """Swap each of ``prelus`` (one shared slope, already in ``model``) for a PReLU with one slope (0.25) per
    channel (dim 1) of its input (He et al. 2015)."""
    shapes = shapes_seen(model, prelus, input_shape, "erase.replace=prelu_channel")
    names = {id(m): name for name, m in model.named_modules()}
    for prelu, shape in zip(prelus, shapes):
        parent_name, _, leaf = names[id(prelu)].rpartition(".")
        channels = shape[1] if len(shape) > 1 else 1
        setattr(model.get_submodule(parent_name), leaf, nn.PReLU(num_parameters=channels, init=0.25))


_BUILDERS: dict[str, Replacement] = {
    "identity": Replacement(nn.Identity),  # EraseReLU: nothing
    "prelu": Replacement(nn.PReLU),  # one learned slope per site, initialised at 0.25
    "prelu_channel": Replacement(nn.PReLU, slope_per_channel),
    "poly": Replacement(Polynomial, shape_polynomials),  # AutoReP: c2 x^2 + c1 x + c0, one set per site
    "poly_channel": Replacement(lambda: Polynomial(per_channel=True), shape_polynomials),
}
# One entry per name the config accepts; a name without a builder fails here, at import.
REPLACEMENTS: dict[str, Replacement] = {name: _BUILDERS[name] for name in NAMES}


def replacement(kind: str) -> Replacement:
    if kind not in REPLACEMENTS:
        raise ValueError(f"erase.replace must be one of {', '.join(REPLACEMENTS)}, got {kind!r}")
    return REPLACEMENTS[kind]
