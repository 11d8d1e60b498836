"""The surrogate registry: the spike's derivative ``g(x, k) = d spike / dx`` at ``x = u_t - theta_t``
that a gradient rule puts in place of the Heaviside step's (zero almost everywhere) derivative.

The sharpness k > 0 is an inverse width for every surrogate: larger k, narrower and taller.
Every surrogate integrates to 1 over x (the height of the step it replaces; the published one
only inside its clamp, |x| < 8/k: beyond, its slope stays at k f(1 - f), f = sigmoid(8)). The
default sharpness of each makes its peak g(0) equal the published one's, 0.25/0.2 = 1.25, so
that a choice of surrogate changes the shape of the gradient, not its scale.
Each works on its own temporaries in place (a surrogate is evaluated on whole [T, B, ...]
tensors in a backward, where memory passes are the cost) and returns a constant (no graph).
"""
import math
from types import MappingProxyType
from typing import Callable, NamedTuple

import torch

SURROGATE_WIDTH = 0.2  # the 0.2 of the published f = sigmoid(clamp(-(u - V)/0.2, -8, 8)) (SPEC §4)
SURROGATE_CLAMP = 8


def _sigmoid_slope(f, scale):
    """``scale * f * (1 - f)`` in place in ``f`` (one pass: sigmoid's own backward kernel)."""
    return torch.ops.aten.sigmoid_backward.grad_input(
        torch.tensor(scale, dtype=f.dtype, device=f.device), f, grad_input=f)


@torch.no_grad()
def _published(x, k):
    """The published surrogate at the dynamic threshold: with width ``w = 1/k`` (default 0.2),
    ``f = sigmoid(clamp(-x/w, -8, 8))``, ``g = f (1 - f) / w``."""
    width = 1 / k
    f = torch.div(x, -width).clamp_(-SURROGATE_CLAMP, SURROGATE_CLAMP).sigmoid_()
    return _sigmoid_slope(f, 1 / width)


@torch.no_grad()
def _sigmoid(x, k):
    """``g = k sigmoid(kx) (1 - sigmoid(kx))`` (SpikingJelly ``Sigmoid``, alpha = k)."""
    return _sigmoid_slope(torch.mul(x, k).sigmoid_(), k)


@torch.no_grad()
def _fast_sigmoid(x, k):
    """``g = (k/2) / (1 + k|x|)^2``: the SuperSpike / fast-sigmoid shape (Zenke & Ganguli 2018;
    snntorch's ``fast_sigmoid`` with slope k), normalised to unit area as SpikingJelly's
    ``SoftSign`` (alpha = k)."""
    return torch.abs(x).mul_(k).add_(1).pow_(-2).mul_(k / 2)


@torch.no_grad()
def _arctan(x, k):
    """``g = (k/2) / (1 + (pi/2 k x)^2)`` (SpikingJelly ``ATan``, alpha = k)."""
    return torch.mul(x, math.pi / 2 * k).square_().add_(1).reciprocal_().mul_(k / 2)


@torch.no_grad()
def _triangle(x, k):
    """``g = k max(0, 1 - k|x|)``: a triangle of half-width ``1/k`` (Esser et al. 2016,
    Bellec et al. 2018)."""
    return torch.abs(x).mul_(-k).add_(1).clamp_(min=0).mul_(k)


@torch.no_grad()
def _rectangle(x, k):
    """``g = k`` where ``|x| < 1/(2k)``, else 0: the windowed straight-through estimator, a box
    of width ``1/k`` (Wu et al. 2018)."""
    return torch.abs(x).lt_(1 / (2 * k)).mul_(k)


class Surrogate(NamedTuple):
    derivative: Callable  # (x, sharpness) -> d spike / dx, element-wise
    default_sharpness: float


SURROGATES = MappingProxyType({
    'published': Surrogate(_published, 1 / SURROGATE_WIDTH),  # k = 5: width 0.2
    'sigmoid': Surrogate(_sigmoid, 5.0),
    'fast-sigmoid': Surrogate(_fast_sigmoid, 2.5),
    'arctan': Surrogate(_arctan, 2.5),
    'triangle': Surrogate(_triangle, 1.25),
    'rectangle': Surrogate(_rectangle, 1.25),
})
