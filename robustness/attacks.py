"""The adaptive attacks and the one table every suite row resolves through (:data:`ATTACKS`).

Our PGD (random starts, restarts, CE/CW/DLR losses); AutoAttack's APGD-CE and APGD-DLR
(``apgd.py``: torchattacks' algorithm, with early stopping), APGD-T and Square (``torchattacks``),
behind an image-in, scores-out wrapper; transfer from a partner model; and the published attacks
of ``attack.py`` (their registry, not a copy). Each works under a threat model
(``threats.py``) and a gradient path (``paths.py``): it gets a ``scores(x)`` function whose input
gradient is that of the path, so an ensemble path needs nothing of the attack.

Adding an attack = one function ``fn(spec, target, x, labels) -> x_adv`` + one ``ATTACKS`` entry.
"""
import dataclasses
from types import MappingProxyType
from typing import Callable

import torch
import torch.nn as nn

import attack as published
from robustness.apgd import Apgd
from robustness.losses import LOSSES
from robustness.paths import scores_through

PGD_STEP_FRACTION = 2.5         # PGD step = 2.5 eps / steps (Madry et al. 2018)
PUBLISHED_PREFIX = 'published-'


# --- our PGD (model units; returns the adversarial input) ---------------------------------------

def pgd(scores, x, labels, threat, eps, loss='ce', steps=10, restarts=1, random_start=True,
        step_size=None, early_stop=True):
    """L-inf PGD on the class scores ``scores(x)`` with random start and restarts, under the
    threat model; the gradient path is whatever ``scores`` differentiates through
    (:func:`paths.scores_through`).

    Keeps, per image, the first iterate that fools the model (every iterate lies in the ball)
    and stops working on it; a restart only attacks the images no earlier restart fooled.
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
                out = scores(threat.apply(xs, delta))
                if not last:
                    (grad,) = torch.autograd.grad(loss_fn(out, ys).sum(), delta)
            delta = delta.detach()
            wrong = out.detach().argmax(1) != ys
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


# --- torchattacks behind an image-in, scores-out wrapper ----------------------------------------

class ImageModel(nn.Module):
    """The model as torchattacks expects it: images in ``[0, 1]`` in, class scores out.

    Clamped threat model: the image is the pixel image (T folded into the channels for
    per-step). Unclamped: an affine rescaling ``z = (p - low) / (high - low)`` with ``low =
    min(0, p) - eps`` and ``high = max(1, p) + eps`` over the batch ``x`` maps the ε-ball around
    every image into ``[0, 1]``, so torchattacks' own clamp never binds; its ε is
    ``eps / (high - low)`` (``eps / (1 + 2 eps)`` for valid images)."""

    def __init__(self, scores, threat, eps, x):
        super().__init__()
        self.scores = scores
        # torchattacks takes its device from the wrapper's first parameter; the model sits behind
        # ``scores``, so a zero-size one on the inputs' device says it.
        self.anchor = nn.Parameter(torch.empty(0, dtype=x.dtype, device=x.device), requires_grad=False)
        self.threat = threat
        if threat.clamp or x.numel() == 0:
            low, high = 0.0, 1.0
        else:
            pixels = threat.to_image(x.detach())
            low = min(0.0, float(pixels.min())) - float(eps)
            high = max(1.0, float(pixels.max())) + float(eps)
        self.offset, self.scale = -low, high - low
        self.eps = float(eps) / self.scale
        with torch.no_grad():  # APGD-T needs the number of classes up front
            self.n_class = scores(x[:1].detach()).shape[1] if len(x) else 0

    def encode(self, x):
        return (self.threat.to_image(x) + self.offset) / self.scale

    def forward(self, z):
        return self.scores(self.threat.from_image(z * self.scale - self.offset))


def torchattacks_attack(make, scores, x, labels, threat, eps):
    """Run ``make(wrapper, eps_image, seed)`` (a torchattacks attack or our ``Apgd``) and return
    the model input.
    torchattacks reseeds torch's global RNG: it runs inside ``fork_rng``. The seed is drawn from
    the (seeded) global RNG, so that rows through different paths start from different random
    points (a fixed seed gave every APGD row of a suite the same starts) and runs repeat."""
    if float(eps) == 0 or len(x) == 0:
        return x.detach()
    wrapper = ImageModel(scores, threat, eps, x)
    z = wrapper.encode(x.detach())
    seed = int(torch.randint(0, 2 ** 31 - 1, ()))
    cuda = x.device.type == 'cuda'
    with torch.random.fork_rng(devices=[x.device] if cuda else [], device_type='cuda'):
        z_adv = make(wrapper, wrapper.eps, seed)(z, labels)
    delta = threat.image_delta_to_model((z_adv.to(x.dtype) - z) * wrapper.scale)
    return threat.apply(x, threat.project(x, delta, eps))


def _apgd(loss):
    # Our port of torchattacks' APGD, which drops an image from the batch once it is fooled
    # (``apgd.py`` says why); the same iterates as torchattacks' otherwise.
    def make(steps, restarts=1):
        return lambda wrapper, eps, seed: Apgd(wrapper, eps, steps, restarts, loss, seed)
    return make


def _apgdt(steps, restarts=1, targets=3):
    import torchattacks

    def make(wrapper, eps, seed):
        attack = torchattacks.APGDT(wrapper, norm='Linf', eps=eps, steps=steps,
                                    n_restarts=restarts, seed=seed, n_classes=wrapper.n_class)
        attack.n_target_classes = min(targets, wrapper.n_class - 1)  # AutoAttack's cheap version
        return attack
    return make


def _square(queries, restarts=1):
    import torchattacks
    return lambda wrapper, eps, seed: torchattacks.Square(wrapper, norm='Linf', eps=eps,
                                                          n_queries=queries, n_restarts=restarts,
                                                          loss='margin', seed=seed)


# --- the registry -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
    """What one row attacks: the model (and the transfer partner), the threat model, ε in pixels,
    the resolved gradient path (``none`` for a black box, the partner's for transfer) and
    ``published_attack(name, model, x, labels, eps, clamp)`` (the published attacks' units)."""
    model: nn.Module
    threat: object
    eps: object
    gradient: str
    published_attack: Callable = None
    partner: nn.Module = None


def _pgd_row(spec, target, x, labels):
    with scores_through(target.model, target.gradient) as scores:
        return pgd(scores, x, labels, target.threat, target.eps, spec.loss, spec.steps, spec.restarts)


def _transfer_row(spec, target, x, labels):
    with scores_through(target.partner, target.gradient) as scores:
        return pgd(scores, x, labels, target.threat, target.eps, spec.loss, spec.steps,
                   early_stop=False)


def _torchattacks_row(make):
    def run(spec, target, x, labels):
        # A black box ('none') only queries the scores: the path is irrelevant to it.
        path = 'autograd' if target.gradient == 'none' else target.gradient
        with scores_through(target.model, path) as scores:
            return torchattacks_attack(make(spec), scores, x, labels, target.threat, target.eps)
    return run


def _published_row(name):
    def run(spec, target, x, labels):
        return target.published_attack(name, target.model, x, labels, target.eps, target.threat.clamp)
    return run


def published_steps(name):
    """The number of gradient steps of published attack ``name`` (attack.py's registry)."""
    return published.ATTACKS[name].params.get('steps', 1)


def published_names():
    """The published test's attacks, in its order (attack.py's registry)."""
    return published.attacks_for('test')


# Read-only: one table for the whole process, which no caller may change under another (a new
# attack is a new entry here, in the source).
ATTACKS = MappingProxyType({
    'pgd': _pgd_row,
    'apgd-ce': _torchattacks_row(lambda spec: _apgd('ce')(spec.steps, spec.restarts)),
    'apgd-dlr': _torchattacks_row(lambda spec: _apgd('dlr')(spec.steps, spec.restarts)),
    'apgd-t': _torchattacks_row(lambda spec: _apgdt(spec.steps, spec.restarts)),
    'square': _torchattacks_row(lambda spec: _square(spec.steps, spec.restarts)),
    'transfer-pgd': _transfer_row,
    **{PUBLISHED_PREFIX + name: _published_row(name) for name in published_names()},
})


def run_attack(spec, target, x, labels):
    """The adversarial input of attack row ``spec`` on one batch."""
    if spec.attack not in ATTACKS:
        raise ValueError(f"unknown attack {spec.attack!r}; choose one of {', '.join(ATTACKS)}")
    return ATTACKS[spec.attack](spec, target, x, labels)
