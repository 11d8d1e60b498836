"""White-box L-inf attacks on the time-expanded input ``x[B, C, H, W, T]`` (SPEC §6), and their
registry.

Every attack is a function ``fn(model, x, labels, eps, bounds=None, **params)`` returning the
adversarial input (detached). ``eps`` is in *model units* (the units of the normalised input:
``Normalization.to_model_units`` turns pixel units into them); ``bounds`` is ``None`` (no clamp)
or ``(low, high)`` in model units (``Normalization.bounds()``, the valid pixel range). The loss
and everything else about the model come from ``model.settings``.

The caller sets the model's mode: eval for test-time attacks, train for adversarial training
(BatchNorm batch statistics). The model is called with ``is_train=False`` (no dropout). Pass the
unwrapped module, not a DistributedDataParallel wrapper: input gradients must not trigger a
gradient all-reduce. R-FGSM and the noises draw from torch's global RNG.

Adding an attack = one function + one ``ATTACKS`` line.
"""
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from layers import attack_loss, class_scores


@dataclass(frozen=True)
class Normalization:
    """The scalar ``Network.mean`` / ``Network.std`` the attacks work with (the published code
    used scalars even for colour data sets). Model units = (pixel - mean) / std."""
    mean: float
    std: float

    @classmethod
    def of(cls, network_cfg):
        """From the YAML's ``Network`` section."""
        return cls(network_cfg['mean'], network_cfg['std'])

    def to_model_units(self, eps_pixels):
        """An L-inf radius in pixel units (``8/255``) in model units."""
        return eps_pixels / self.std

    def bounds(self):
        """The valid pixel range [0, 1] in model units: ``(low, high)``."""
        return (0 - self.mean) / self.std, (1 - self.mean) / self.std


def attack_bounds(cfg):
    """What an attack clamps to under ``cfg``: the valid range if ``ATTACK.clamp``, else None."""
    return Normalization.of(cfg['Network']).bounds() if cfg['ATTACK']['clamp'] else None


def _clamp(x, bounds):
    return x if bounds is None else x.clamp(*bounds)


def input_gradient(model, x, labels):
    """d(attack loss)/dx, without touching the parameters' ``.grad``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out, _ = model(x, False)
        loss = attack_loss(out, labels, model.settings)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _fgsm_step(model, x, labels, eps, bounds):
    grad = input_gradient(model, x, labels)
    return _clamp(x.detach() + eps * grad.sign(), bounds)


def fgsm(model, x, labels, eps, bounds=None):
    """FGSM: ``x + eps * sign(grad)``, then clamp."""
    return _fgsm_step(model, x, labels, eps, bounds)


def iterative_attack(model, x, labels, eps, bounds, steps, step_size, x_start=None):
    """``steps`` FGSM steps of ``step_size`` from ``x`` (or from ``x_start``, a point of the
    eps-ball: a random start), each projected onto the eps-ball around ``x`` and clamped: PGD and
    BIM as published, or stronger variants."""
    x = x.detach()
    x_adv = x if x_start is None else x_start.detach()
    for _ in range(steps):
        x_adv = _fgsm_step(model, x_adv, labels, step_size, bounds)
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)  # project onto the eps-ball
        x_adv = _clamp(x_adv, bounds)
    return x_adv


def projected_steps(model, x, labels, eps, bounds=None, steps=7, step_divisor=3):
    """PGD / BIM as published: ``steps`` steps of size ``eps / step_divisor``, no random start."""
    return iterative_attack(model, x, labels, eps, bounds, steps, eps / step_divisor)


def rfgsm(model, x, labels, eps, bounds=None):
    """R-FGSM: a random ``eps/2`` sign step, then an FGSM step of the remaining ``eps - eps/2``."""
    alpha = eps / 2
    x_start = x.detach() + alpha * torch.randn_like(x).sign()
    return _fgsm_step(model, x_start, labels, eps - alpha, bounds)


def fgsm_random_start(model, x, labels, eps, bounds=None, step_scale=1.25):
    """FGSM with a random start (Wong, Rice & Kolter 2020, "Fast is better than free"): a uniform
    start in the eps-ball, one sign step of ``step_scale * eps``, projected back onto the ball and
    clamped. Not in the paper: an option for adversarial training (``ATTACK.ft_method: fgm_rs``)."""
    x = x.detach()
    x_start = _clamp(x + torch.empty_like(x).uniform_(-eps, eps), bounds)
    x_adv = _fgsm_step(model, x_start, labels, step_scale * eps, bounds)
    return _clamp(torch.min(torch.max(x_adv, x - eps), x + eps), bounds)


def pgd_random_start(model, x, labels, eps, bounds=None, steps=10, step_fraction=None):
    """PGD with a uniform random start in the eps-ball (Madry et al. 2018): ``steps`` sign steps of
    ``step_fraction * eps`` (default ``2.5 / steps``: the steps can cross the ball from any start),
    projected and clamped. Not in the paper: ``ATTACK.ft_method: pgd_rs`` (``ft_steps``,
    ``ft_step_size``). The step is a fraction of eps so that it follows an eps ramp."""
    step_fraction = 2.5 / steps if step_fraction is None else step_fraction
    x = x.detach()
    x_start = _clamp(x + torch.empty_like(x).uniform_(-eps, eps), bounds)
    return iterative_attack(model, x, labels, eps, bounds, steps, step_fraction * eps, x_start)


def trades_kl(scores_adv, scores_clean, reduction='batchmean'):
    """TRADES' robust term ``KL(softmax(scores_clean) || softmax(scores_adv))`` (Zhang et al.
    2019), summed over the classes and reduced over the batch (``'batchmean'`` or ``'sum'``)."""
    return F.kl_div(F.log_softmax(scores_adv, 1), F.softmax(scores_clean, 1), reduction=reduction)


# TRADES starts its inner maximisation at x + 0.001 N(0, 1) for its eps = 0.031: the start's
# scale relative to eps.
TRADES_START_SCALE = 0.001 / 0.031


def trades_attack(model, x, labels, eps, bounds=None, steps=10, step_fraction=None):
    """TRADES' inner maximisation: PGD on ``KL(f(x) || f(x'))`` (labels unused) from
    ``x + (eps/31) N(0, 1)``, ``steps`` sign steps of ``step_fraction * eps`` (default
    ``2.5 / steps``), projected onto the eps-ball and clamped. ``f`` = the class scores.
    Not in the paper: ``ATTACK.ft_method: trades`` (training/adversarial.py has the outer loss)."""
    step_fraction = 2.5 / steps if step_fraction is None else step_fraction
    x = x.detach()
    with torch.no_grad():
        clean = class_scores(model, x)
    x_adv = _clamp(x + TRADES_START_SCALE * eps * torch.randn_like(x), bounds)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = trades_kl(class_scores(model, x_adv), clean, reduction='sum')
            (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step_fraction * eps * grad.sign()
        x_adv = _clamp(torch.min(torch.max(x_adv, x - eps), x + eps), bounds)
    return x_adv.detach()


def random_sign_noise(model, x, labels, eps, bounds=None):
    """Random +-eps noise, a sanity baseline the size of an L-inf attack (not in the paper)."""
    return _clamp(x.detach() + eps * torch.randn_like(x).sign(), bounds)


# Where an attack is used: 'test' = a row of the published adversarial test (main.py's advtest,
# the protocol table; in registry order), 'train' = selectable as ATTACK.ft_method for
# adversarial training, 'baseline' = a noise sanity row of the protocol table.
USAGES = ('test', 'train', 'baseline')


@dataclass(frozen=True)
class Attack:
    """One registry entry. ``attack(model, x, labels, eps, bounds=None)`` runs
    ``fn(model, x, labels, eps, bounds, **params)``."""
    name: str
    fn: Callable
    usage: tuple = ()
    params: dict = field(default_factory=dict)  # e.g. steps and step-size rule
    title: str = ''              # as tables print it
    ft_method: str = None        # its name as ATTACK.ft_method (usage 'train')

    def __post_init__(self):
        unknown = set(self.usage) - set(USAGES)
        if unknown:
            raise ValueError(f"attack {self.name!r}: unknown usage {sorted(unknown)} (one of {USAGES})")
        if ('train' in self.usage) != (self.ft_method is not None):
            raise ValueError(f"attack {self.name!r}: an ft_method name goes with usage 'train'")

    def __call__(self, model, x, labels, eps, bounds=None):
        return self.fn(model, x, labels, eps, bounds, **self.params)


ATTACKS = {attack.name: attack for attack in (
    Attack('fgsm', fgsm, ('test', 'train'), title='FGSM', ft_method='fgm'),
    Attack('rfgsm', rfgsm, ('test',), title='R-FGSM'),
    Attack('pgd', projected_steps, ('test', 'train'), dict(steps=7, step_divisor=3), title='PGD',
           ft_method='pgd'),
    Attack('bim', projected_steps, ('test',), dict(steps=7, step_divisor=7), title='BIM'),
    Attack('fgsm-rs', fgsm_random_start, ('train',), title='FGSM-RS', ft_method='fgm_rs'),
    # steps and step size from ATTACK.ft_steps / ft_step_size (training/adversarial.py)
    Attack('pgd-rs', pgd_random_start, ('train',), dict(steps=10), title='PGD-RS',
           ft_method='pgd_rs'),
    Attack('trades', trades_attack, ('train',), dict(steps=10), title='TRADES', ft_method='trades'),
    Attack('noise', random_sign_noise, ('baseline',), title='sign noise'),
)}


def attacks_for(usage):
    """The names of the attacks with ``usage``, in registry order."""
    return tuple(name for name, attack in ATTACKS.items() if usage in attack.usage)


# Every number of the published attacks (usage 'test': they differentiate the published backward,
# blind to the threshold dynamics) is labelled so wherever it is shown (README: Robustness).
PUBLISHED_LABEL = 'published attack'
TRANSFER_SUFFIX = '-transfer'  # protocol.py's rows of examples crafted on the partner model


def attack_label(name):
    """An attack row's name as console tables show it: ``pgd (published attack)`` for the
    published attacks and their transfer rows (``pgd-transfer``), the name alone otherwise."""
    base = name[:-len(TRANSFER_SUFFIX)] if name.endswith(TRANSFER_SUFFIX) else name
    return f"{name} ({PUBLISHED_LABEL})" if base in attacks_for('test') else name


FT_METHODS = tuple(attack.ft_method for attack in ATTACKS.values() if 'train' in attack.usage)


def training_attack(ft_method):
    """The registry entry of ``ATTACK.ft_method`` (``fgm`` -> FGSM, ``pgd`` -> PGD)."""
    for attack in ATTACKS.values():
        if attack.ft_method == ft_method:
            return attack
    raise KeyError(f"ATTACK.ft_method {ft_method!r} is not one of {', '.join(FT_METHODS)}")
