"""Threat models: what an attacker may do to the model input ``x[B, C, H, W, T]``, ε as an exact
fraction, and the class scores every attack works on.

Units. Model inputs are normalised images repeated over time, ``x[B, C, H, W, T]``. A threat
model (:class:`ThreatModel`) turns a pixel ε into model units ``ε / std_c`` (per channel) and
says what may be perturbed: ``per-step`` (published: every time step separately) or ``static``
(one perturbation of the image, repeated over T: what a camera image allows), clamped to the
valid pixel range or not (published MNIST family: not). Our attacks optimise the perturbation
``delta`` itself (``[B, C, H, W, T]`` or ``[B, C, H, W]``), so ``delta = 0`` is the clean input
bit for bit.

Scores. ``predict`` takes the argmax of ``out.sum(-1)``; every loss is computed on those class
scores, so "the loss went up" and "the prediction changed" talk about the same numbers.
"""
import dataclasses
from fractions import Fraction

import torch

from layers import class_scores  # noqa: F401 -- the scores every attack here works on
from layers.config_keys import read_fraction

THREATS = ('per-step', 'static')

# --- ε as an exact fraction ---------------------------------------------------------------------

def parse_eps(value, where='--eps'):
    """``'8/255'``, ``'0.03'``, a number or a Fraction -> Fraction (layers.config_keys.read_fraction,
    never ``eval``-ed); a float becomes its nearest short fraction (``8/255`` computed in floating
    point reads back as 8/255, for exact reports)."""
    eps = read_fraction(str(value) if isinstance(value, Fraction) else value, where)
    return eps.limit_denominator(100000) if isinstance(value, float) else eps


# --- threat models ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ThreatModel:
    """What an attacker may do to ``x[B, C, H, W, T]``; ``mean``/``std`` per channel (pixels)."""
    threat: str
    clamp: bool
    mean: tuple
    std: tuple
    n_steps: int

    def __post_init__(self):
        if self.threat not in THREATS:
            raise ValueError(f"threat model {self.threat!r}: choose one of {', '.join(THREATS)}")

    @property
    def static(self):
        return self.threat == 'static'

    def _per_channel(self, values, ref, time_axis):
        shape = (1, -1, 1, 1, 1) if time_axis else (1, -1, 1, 1)
        return torch.tensor(values, dtype=ref.dtype, device=ref.device).view(shape)

    def eps_model(self, eps, ref):
        """ε per channel in model units, shaped to broadcast against the perturbation."""
        return self._per_channel([float(eps) / s for s in self.std], ref, not self.static)

    def delta_shape(self, x):
        return x.shape[:-1] if self.static else x.shape

    def apply(self, x, delta):
        """The perturbed model input."""
        return x + delta.unsqueeze(-1) if self.static else x + delta

    def project(self, x, delta, eps):
        """``delta`` onto the ε-ball and, when clamping, onto the valid pixel range."""
        bound = self.eps_model(eps, x)
        delta = torch.max(torch.min(delta, bound), -bound)
        if self.clamp:
            base = x[..., 0] if self.static else x
            low = self._per_channel([(0 - m) / s for m, s in zip(self.mean, self.std)], x,
                                    not self.static)
            high = self._per_channel([(1 - m) / s for m, s in zip(self.mean, self.std)], x,
                                     not self.static)
            delta = torch.max(torch.min(delta, high - base), low - base)
        return delta

    # The "image" form torchattacks works on: pixels, with T folded into the channels (per-step).
    def to_image(self, x):
        pixels = x * self._per_channel(self.std, x, True) + self._per_channel(self.mean, x, True)
        if self.static:
            return pixels[..., 0]
        batch, channels, height, width, steps = pixels.shape
        return pixels.permute(0, 1, 4, 2, 3).reshape(batch, channels * steps, height, width)

    def image_delta_to_model(self, delta_image):
        """A pixel perturbation of the image form -> ``delta`` in model units."""
        if self.static:
            return delta_image / self._per_channel(self.std, delta_image, False)
        batch, folded, height, width = delta_image.shape
        delta = delta_image.view(batch, folded // self.n_steps, self.n_steps, height, width)
        return delta.permute(0, 1, 3, 4, 2) / self._per_channel(self.std, delta_image, True)

    def from_image(self, image):
        """The image form -> the model input ``x[B, C, H, W, T]``."""
        if self.static:
            pixels = image.unsqueeze(-1).expand(*image.shape, self.n_steps)
        else:
            batch, folded, height, width = image.shape
            pixels = image.view(batch, folded // self.n_steps, self.n_steps, height, width)
            pixels = pixels.permute(0, 1, 3, 4, 2)
        x = (pixels - self._per_channel(self.mean, image, True)) / self._per_channel(self.std, image, True)
        return x.contiguous()

