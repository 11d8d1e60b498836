"""White-box L-inf attacks on the time-expanded input ``x[B, C, H, W, T]`` (SPEC §6).

Every attack takes ``(model, x, labels, eps, network_cfg, clamp=False)`` with ``eps`` already
divided by ``Network.std``, and returns the adversarial input (detached). The caller sets the
model's mode: eval for test-time attacks, train for adversarial training (BatchNorm batch
statistics). The model is called with ``is_train=False`` (no dropout). Pass the unwrapped module,
not a DistributedDataParallel wrapper: input gradients must not trigger a gradient all-reduce.
R-FGSM and Gaussian noise draw from torch's global RNG.
"""
import torch

from layers import NetworkSettings, attack_loss

PGD_STEPS = 7
BIM_STEPS = 7
PGD_STEP_DIVISOR = 3  # PGD step size eps/3 (with 7 steps)


def _clamp_bounds(network_cfg):
    """The valid input range of a normalised image, from the YAML's scalar mean/std."""
    mean, std = network_cfg['mean'], network_cfg['std']
    return (0 - mean) / std, (1 - mean) / std


def _clamp(x, network_cfg, clamp):
    if not clamp:
        return x
    low, high = _clamp_bounds(network_cfg)
    return x.clamp(low, high)


def _input_gradient(model, x, labels, settings):
    """d(attack loss)/dx, without touching the parameters' ``.grad``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out, _ = model(x, False)
        loss = attack_loss(out, labels, settings)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _fgsm_step(model, x, labels, eps, network_cfg, settings, clamp):
    grad = _input_gradient(model, x, labels, settings)
    return _clamp(x.detach() + eps * grad.sign(), network_cfg, clamp)


def fgsm(model, x, labels, eps, network_cfg, clamp=False):
    """FGSM: ``x + eps * sign(grad)``, then clamp."""
    return _fgsm_step(model, x, labels, eps, network_cfg, NetworkSettings.of(network_cfg), clamp)


def iterative_attack(model, x, labels, eps, network_cfg, clamp, steps, step_size):
    """``steps`` FGSM steps of ``step_size`` from ``x`` (no random start), each projected onto the
    eps-ball around ``x`` and clamped: PGD and BIM as published, or stronger variants."""
    settings = NetworkSettings.of(network_cfg)
    x = x.detach()
    x_adv = x
    for _ in range(steps):
        x_adv = _fgsm_step(model, x_adv, labels, step_size, network_cfg, settings, clamp)
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)  # project onto the eps-ball
        x_adv = _clamp(x_adv, network_cfg, clamp)
    return x_adv


def pgd(model, x, labels, eps, network_cfg, clamp=False):
    """PGD as published: no random start, 7 steps of size ``eps/3``, projected and clamped."""
    return iterative_attack(model, x, labels, eps, network_cfg, clamp, PGD_STEPS,
                            eps / PGD_STEP_DIVISOR)


def bim(model, x, labels, eps, network_cfg, clamp=False):
    """BIM: as PGD with 7 steps of size ``eps/7``."""
    return iterative_attack(model, x, labels, eps, network_cfg, clamp, BIM_STEPS, eps / BIM_STEPS)


def rfgsm(model, x, labels, eps, network_cfg, clamp=False):
    """R-FGSM: a random ``eps/2`` sign step, then an FGSM step of the remaining ``eps - eps/2``."""
    alpha = eps / 2
    x_start = x.detach() + alpha * torch.randn_like(x).sign()
    return _fgsm_step(model, x_start, labels, eps - alpha, network_cfg,
                      NetworkSettings.of(network_cfg), clamp)


def gaussian_noise(model, x, labels, eps, network_cfg, clamp=False):
    """Gaussian noise ``x + eps * N(0, 1)``, then clamp (``model``/``labels`` unused: same
    signature as the attacks)."""
    return _clamp(x.detach() + eps * torch.randn_like(x), network_cfg, clamp)


def random_sign_noise(model, x, labels, eps, network_cfg, clamp=False):
    """Random +-eps noise, a sanity baseline the size of an L-inf attack (not in the paper)."""
    return _clamp(x.detach() + eps * torch.randn_like(x).sign(), network_cfg, clamp)


ATTACKS = {'fgsm': fgsm, 'rfgsm': rfgsm, 'pgd': pgd, 'bim': bim, 'gaussian': gaussian_noise,
           'noise': random_sign_noise}
