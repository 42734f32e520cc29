"""A learned quadratic where a ReLU was: ``c2 * x**2 + c1 * x + c0`` (AutoReP, Peng et al., ICCV 2023; Delphi's
quadratic, Mishra et al., USENIX Security 2020, is the same form).

``erase.replace=poly`` learns one ``(c2, c1, c0)`` per site, ``poly_channel`` one per channel (dim 1) of what the
site sees. Both start at ``(0.005, 1, 0)``: the identity bent by a small square, the initialisation of the
x²-activation (``x2act``) of the AutoReP authors' released code, so that a network whose ReLUs were just replaced
starts where EraseReLU's identity would and learns its curvature.

A polynomial is not free in private inference: each element costs a secure multiplication (the square) and a
truncation, where an erased (identity) element costs nothing. So the ReLU count leaves it out and
:func:`count_polys` counts it: the polynomial evaluations of one forward pass on one image, the ``polys`` of
``result.json``. Under a gate (``erase.method=gates`` with a polynomial replacement) an element is evaluated by the
ReLU where its gate is 1 and by the polynomial where it is 0.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .graph_sites import site_of_module
from .rectifiers import input_shapes_seen

INIT = (0.005, 1.0, 0.0)  # (c2, c1, c0)
# The square's coefficient is learned as c2 / SQUARE_SCALE. Its gradient (x^2 times the loss's) dwarfs the others' at
# a residual stream's scale: learned directly at the network's learning rate, c2 diverged within the first epoch
# (ResNet-20 on the digits, lr 0.1, every block's last ReLU a polynomial); scaled, its step is 1e4 times smaller.
SQUARE_SCALE = 0.01


class Polynomial(nn.Module):
    """``c2 * x**2 + c1 * x + c0``; parameter ``coefficients`` of shape (3,) per site or (3, C) per channel,
    set by :meth:`shape_from` once a forward pass has shown the channels it sees."""

    def __init__(self, per_channel: bool = False, init: Sequence[float] = INIT):
        super().__init__()
        self.per_channel = per_channel
        self.register_buffer("scale", torch.tensor([SQUARE_SCALE, 1.0, 1.0]), persistent=False)
        self.coefficients = nn.Parameter(torch.tensor([float(c) for c in init]) / self.scale)
        self.elements = 0  # of one sample, as the polynomial sees it; 0: not yet shaped

    def shape_from(self, sample_shape: Sequence[int]) -> None:
        """Size it for inputs of ``sample_shape`` (one sample: C[, H, W]): one set of coefficients per channel
        where ``per_channel``."""
        sample_shape = tuple(sample_shape)
        self.elements = int(torch.Size(sample_shape).numel())
        if self.per_channel:
            channels = sample_shape[0] if sample_shape else 1
            init = self.coefficients.detach().reshape(3, -1)[:, :1]
            self.coefficients = nn.Parameter(init.expand(3, channels).clone().to(self.coefficients.device))

    def effective_coefficients(self) -> torch.Tensor:
        """(c2, c1, c0), of shape (3,) or (3, C): the learned ``coefficients`` with the square's scale applied."""
        c = self.coefficients
        return c * self.scale.reshape(3, *([1] * (c.dim() - 1))).to(c.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.effective_coefficients().to(x.dtype)
        if c.dim() == 2:  # per channel, on dim 1 of a batch
            c = c.reshape(3, 1, -1, *([1] * (x.dim() - 2)))
        return c[0] * x * x + c[1] * x + c[2]

    evaluates_polynomial = True

    @property
    def polynomial_coefficients(self) -> torch.Tensor:
        """What the private-inference export reads (``erasenet.pi.export``): rows c2, c1, c0."""
        return self.effective_coefficients()

    def counted_polys(self, elements: int) -> int:
        return elements

    def extra_repr(self) -> str:
        return f"per_channel={self.per_channel}, coefficients={tuple(self.coefficients.shape)}"


def coefficient_names(model: nn.Module) -> set[str]:
    """The parameter names of every polynomial's coefficients (kept out of weight decay, which would pull the
    linear term c1 from 1 towards 0 and so change the function the site computes)."""
    return {f"{name}.coefficients" for name, m in model.named_modules() if isinstance(m, Polynomial)}


def shape_polynomials(model: nn.Module, polys: list[nn.Module], input_shape: Sequence[int]) -> None:
    """Size each of ``polys`` (already in ``model``) from the input one forward pass of one ``input_shape`` input
    shows it."""
    for poly, shape in zip(polys, input_shapes_seen(model, polys, input_shape, "erase.replace=poly")):
        poly.shape_from(shape[1:])


def count_polys(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Polynomial evaluations of one forward pass on one image of ``input_shape`` (C, H, W): every element a
    :class:`Polynomial` sees, except under a gate, where only the elements whose gate is 0."""
    return sum(site["polys"] for site in polys_per_site(model, input_shape))


def polys_per_site(model: nn.Module, input_shape: Sequence[int]) -> list[dict]:
    """Per module that evaluates a polynomial (a :class:`Polynomial`, or a gate holding one), in registration
    order: its site (named as the erase record names it), the elements it sees and its polynomial evaluations, of
    one image."""
    counters = [(name, m) for name, m in model.named_modules() if getattr(m, "evaluates_polynomial", False)]
    inside = {f"{name}.{child}" for name, m in counters for child, _ in m.named_children()}  # a gate's own
    counters = [(name, m) for name, m in counters if name not in inside]
    if not counters:
        return []
    shapes = input_shapes_seen(model, [m for _, m in counters], input_shape, "the polynomial count")
    names = dict(model.named_modules())
    return [{"site": site_of_module(name, names), "elements": int(torch.Size(shape[1:]).numel()),
             "polys": m.counted_polys(int(torch.Size(shape[1:]).numel()))}
            for (name, m), shape in zip(counters, shapes)]
