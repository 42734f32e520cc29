"""fb.resnet.torch's colour augmentation for ImageNet training: brightness, contrast and saturation jitter, then
AlexNet's PCA lighting noise.

As there, it works on RGB in [0, 1] before normalisation and clamps nothing. fb.resnet.torch applies the three
jitters in a random order, but the order cannot change the result: each is a linear blend towards a target that the
other two transform alike (the grayscale weights sum to 1). So they run in a fixed order; the tests check this
against the random-order definition. Each image's random numbers are drawn where the image is cropped
(:meth:`ColorAugment.draw`, from the generator seeded for that image), so they do not depend on the number of
workers or ranks; the arithmetic runs batched on the training device (:meth:`ColorAugment.apply`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# ImageNet's RGB principal components on the [0, 1] scale (AlexNet's lighting noise, as fb.resnet.torch uses it)
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))
LUMA = (0.299, 0.587, 0.114)  # the grayscale that contrast and saturation blend towards


@dataclass(frozen=True)
class ColorAugment:
    """``jitter``: each blend factor is drawn from 1 ± jitter (fb.resnet.torch: 0.4); ``lighting``: the standard
    deviation of the weights of the three principal components (fb.resnet.torch: 0.1). Zero turns a part off."""

    jitter: float
    lighting: float

    def draw(self) -> torch.Tensor:
        """One image's parameters, from torch's global generator: the brightness, contrast and saturation blend
        factors, then the three PCA weights."""
        factors = 1.0 + (torch.rand(3) * 2.0 - 1.0) * self.jitter
        weights = torch.randn(3) * self.lighting
        return torch.cat([factors, weights])

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Augment the float RGB batch ``x`` (N x 3 x H x W, on [0, 1]) with each image's row of ``params``."""
        params = params.to(x.device, x.dtype)
        if self.jitter:
            brightness, contrast, saturation = (params[:, i].view(-1, 1, 1, 1) for i in range(3))
            x = brightness * x  # a blend towards black
            x = contrast * x + (1.0 - contrast) * _gray(x).mean((2, 3), keepdim=True)
            x = saturation * x + (1.0 - saturation) * _gray(x)
        if self.lighting:
            eigval, eigvec = x.new_tensor(PCA_EIGVAL), x.new_tensor(PCA_EIGVEC)
            shift = (params[:, 3:] * eigval) @ eigvec.T  # per image: sum_j eigvec[:, j] * weight_j * eigval_j
            x = x + shift[:, :, None, None]
        return x


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)


def color_augment(jitter: float, lighting: float) -> ColorAugment | None:
    """The augmentation the two knobs ask for, or None when both are off."""
    return ColorAugment(float(jitter), float(lighting)) if jitter or lighting else None
