"""The adaptive attacks (issue 9): PGD with random starts, restarts and margin losses, AutoAttack's
APGD and Square from ``torchattacks`` behind an image-in, scores-out wrapper, and transfer -- each
under a threat model (per-step or static perturbation, clamped or not) and a gradient path
(``layers/bptt.py``). ``adaptive.py`` runs them as suites; ``attack.ATTACKS`` lists them.

Units. Model inputs are normalised images repeated over time, ``x[B, C, H, W, T]``. A threat
model (:class:`ThreatModel`) turns a pixel ε into model units ``ε / std_c`` (per channel) and
says what may be perturbed. Our attacks optimise the perturbation ``delta`` itself
(``[B, C, H, W, T]`` or ``[B, C, H, W]``), so ``delta = 0`` is the clean input bit for bit.

Scores. ``predict`` takes the argmax of ``out.sum(-1)``; every loss here is computed on those
class scores, so "the loss went up" and "the prediction changed" talk about the same numbers.
"""
import dataclasses
import math
from fractions import Fraction

import torch
import torch.nn as nn
import torch.nn.functional as F

from layers.bptt import PUBLISHED, use_gradient_path
from layers.config_keys import read_fraction
from runtime.formatting import eps_text  # noqa: F401 -- shared with the published test's progress bars

THREATS = ('per-step', 'static')
PGD_STEP_FRACTION = 2.5         # PGD step = 2.5 eps / steps (Madry et al. 2018)

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


def class_scores(model, x):
    """The scores ``predict`` takes the argmax of: the output summed over time, ``[B, n_class]``."""
    out, _ = model(x, False)
    return out.sum(-1).flatten(1)


# --- losses on the class scores -----------------------------------------------------------------

def _best_other(scores, labels):
    other = scores.clone()
    other[torch.arange(len(labels), device=labels.device), labels] = -math.inf
    return other.max(1).values


def margin_loss(scores, labels):
    """CW margin ``max_{j != y} s_j - s_y`` per sample (> 0: fooled)."""
    correct = scores.gather(1, labels[:, None])[:, 0]
    return _best_other(scores, labels) - correct


def dlr_loss(scores, labels):
    """Difference of logits ratio (Croce & Hein 2020), per sample; needs >= 3 classes."""
    ordered = scores.sort(dim=1).values
    return margin_loss(scores, labels) / (ordered[:, -1] - ordered[:, -3] + 1e-12)


LOSSES = {
    'ce': lambda scores, labels: F.cross_entropy(scores, labels, reduction='none'),
    'cw': margin_loss,
    'dlr': dlr_loss,
}


# --- our attacks (model units; return the adversarial input) ------------------------------------

def pgd(model, x, labels, threat, eps, loss='ce', steps=10, restarts=1, random_start=True,
        step_size=None, early_stop=True):
    """L-inf PGD on the class scores with random start and restarts, under the threat model.

    Keeps, per image, the first iterate that fools the model (every iterate lies in the ball)
    and stops working on it; a restart only attacks the images no earlier restart fooled. The
    gradient path is the model's current one (see :func:`layers.bptt.use_gradient_path`).
    ``early_stop=False`` (transfer: an example that only just fools the source transfers badly)
    runs every step on every image and returns the last iterate of one run."""
    loss_fn = LOSSES[loss]
    x = x.detach()
    bound = threat.eps_model(eps, x)
    alpha = bound * (PGD_STEP_FRACTION / steps) if step_size is None else bound * step_size
    best = torch.zeros(threat.delta_shape(x), dtype=x.dtype, device=x.device)
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(restarts if early_stop else 1):
        todo = (~fooled).nonzero()[:, 0]
        if len(todo) == 0 or float(eps) == 0:
            break
        xs, ys = x[todo], labels[todo]
        if random_start:
            delta = (torch.rand_like(best[todo]) * 2 - 1) * bound
        else:
            delta = torch.zeros_like(best[todo])
        delta = threat.project(xs, delta, eps)
        for step in range(steps + 1):
            last = step == steps
            with torch.enable_grad():
                delta.requires_grad_(not last)
                scores = class_scores(model, threat.apply(xs, delta))
                if not last:
                    (grad,) = torch.autograd.grad(loss_fn(scores, ys).sum(), delta)
            delta = delta.detach()
            wrong = scores.detach().argmax(1) != ys
            if early_stop and wrong.any():  # record and drop the images fooled by this iterate
                best[todo[wrong]] = delta[wrong]
                fooled[todo[wrong]] = True
                keep = ~wrong
                todo, xs, ys, delta = todo[keep], xs[keep], ys[keep], delta[keep]
                if not last:
                    grad = grad[keep]
                if len(todo) == 0:
                    break
            if last:
                best[todo] = delta  # not fooled (or no early stop): the last iterate
                break
            delta = threat.project(xs, delta + alpha * grad.sign(), eps)
    return threat.apply(x, best)


class ImageModel(nn.Module):
    """The model as torchattacks expects it: images in ``[0, 1]`` in, class scores out.

    Clamped threat model: the image is the pixel image (T folded into the channels for
    per-step). Unclamped: an affine rescaling ``z = (p - low) / (high - low)`` with ``low =
    min(0, p) - eps`` and ``high = max(1, p) + eps`` over the batch ``x`` maps the ε-ball around
    every image into ``[0, 1]``, so torchattacks' own clamp never binds; its ε is
    ``eps / (high - low)`` (``eps / (1 + 2 eps)`` for valid images)."""

    def __init__(self, model, threat, eps, x):
        super().__init__()
        self.model = model
        self.threat = threat
        self.n_class = model.settings.n_class
        if threat.clamp or x.numel() == 0:
            low, high = 0.0, 1.0
        else:
            pixels = threat.to_image(x.detach())
            low = min(0.0, float(pixels.min())) - float(eps)
            high = max(1.0, float(pixels.max())) + float(eps)
        self.offset, self.scale = -low, high - low
        self.eps = float(eps) / self.scale

    def encode(self, x):
        return (self.threat.to_image(x) + self.offset) / self.scale

    def forward(self, z):
        return class_scores(self.model, self.threat.from_image(z * self.scale - self.offset))


def torchattacks_attack(make, model, x, labels, threat, eps):
    """Run ``make(wrapper, eps_image)`` (a torchattacks attack) and return the model input.
    torchattacks reseeds torch's global RNG: it runs inside ``fork_rng``."""
    if float(eps) == 0:
        return x.detach()
    wrapper = ImageModel(model, threat, eps, x)
    z = wrapper.encode(x.detach())
    cuda = x.device.type == 'cuda'
    with torch.random.fork_rng(devices=[x.device] if cuda else [], device_type='cuda'):
        z_adv = make(wrapper, wrapper.eps)(z, labels)
    delta = threat.image_delta_to_model((z_adv.to(x.dtype) - z) * wrapper.scale)
    return threat.apply(x, threat.project(x, delta, eps))


def _apgd(loss):
    def make(steps, restarts=1):
        import torchattacks
        return lambda wrapper, eps: torchattacks.APGD(wrapper, norm='Linf', eps=eps, steps=steps,
                                                      n_restarts=restarts, loss=loss, seed=0)
    return make


def _apgdt(steps, restarts=1, targets=3):
    import torchattacks

    def make(wrapper, eps):
        attack = torchattacks.APGDT(wrapper, norm='Linf', eps=eps, steps=steps,
                                    n_restarts=restarts, seed=0, n_classes=wrapper.n_class)
        attack.n_target_classes = min(targets, wrapper.n_class - 1)  # AutoAttack's cheap version
        return attack
    return make


def _square(queries, restarts=1):
    import torchattacks
    return lambda wrapper, eps: torchattacks.Square(wrapper, norm='Linf', eps=eps,
                                                    n_queries=queries, n_restarts=restarts,
                                                    loss='margin', seed=0)


def registry_attack(model, x, labels, eps, bounds=None, attack='pgd', loss='ce', steps=10,
                    restarts=1, gradient='bptt:published:5'):
    """An attack of this module behind ``attack.ATTACKS``' signature: ``eps`` in model units,
    ``bounds`` ``(low, high)`` in model units or None; per-step threat model (SPEC §6's units:
    scalar mean/std, so "pixels" are the affine image of model units that ``bounds`` imply)."""
    if bounds is None:
        mean, std = 0.0, 1.0  # no pixel range: the model units themselves
    else:
        low, high = bounds
        std = 1.0 / (high - low)
        mean = -low * std
    channels = x.shape[1]
    threat = ThreatModel('per-step', bounds is not None, (mean,) * channels, (std,) * channels,
                         x.shape[-1])
    spec = AttackSpec(attack, gradient, loss, steps, restarts)
    return run_attack(spec, gradient, model, None, x, labels, threat, Fraction(float(eps) * std),
                    None).detach()


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of a suite. ``gradient``: a path name (``published``, ``bptt:<shape>:<k>``),
    ``best:<n>`` (the n-th strongest path of this group's PGD rows so far), ``none`` (black
    box) or ``partner:<path>`` (transfer). ``survivors``: run only on images every earlier
    attack of the group failed on (its row is then the worst case after it)."""
    attack: str
    gradient: str
    loss: str
    steps: int
    restarts: int = 1
    survivors: bool = False

    @property
    def published(self):
        return self.attack.startswith('published-')


def run_attack(spec, gradient, model, partner, x, labels, threat, eps, published_attack):
    """The adversarial input of one attack on one batch."""
    if spec.published:
        return published_attack(spec.attack[len('published-'):], model, x, labels, eps, threat.clamp)
    if spec.attack == 'transfer-pgd':
        with use_gradient_path(partner, gradient):
            return pgd(partner, x, labels, threat, eps, spec.loss, spec.steps, early_stop=False)
    with use_gradient_path(model, gradient if gradient != 'none' else PUBLISHED):
        if spec.attack == 'pgd':
            return pgd(model, x, labels, threat, eps, spec.loss, spec.steps, spec.restarts)
        if spec.attack in ('apgd-ce', 'apgd-dlr'):
            make = _apgd(spec.loss)(spec.steps, spec.restarts)
        elif spec.attack == 'apgd-t':
            make = _apgdt(spec.steps, spec.restarts)
        elif spec.attack == 'square':
            make = _square(spec.steps, spec.restarts)
        else:
            raise ValueError(f"unknown attack {spec.attack!r}")
        return torchattacks_attack(make, model, x, labels, threat, eps)


