"""Adversarial training at the evaluation eps (issue 18): the adversary of a training run
(``ATTACK.ft_method`` at ``ATTACK.train[0]``, crafted through ``ATTACK.ft_gradient``, with an
optional eps ramp), TRADES' outer loss, and the held-out validation split that model selection
by robust accuracy (``DEFAULT.select: robust``) uses.

TRADES for spiking networks. Zhang et al. (2019) minimise ``CE(f(x), y) + beta KL(f(x) || f(x'))``
with ``x'`` maximising the KL. Here ``f`` is the class scores the prediction uses (the output
summed over time, ``layers.class_scores``; the logits of the ANN twin). The natural term is the
network's *own* training loss (``layers.compute_loss``): the kernel loss for kernel-loss networks
(cross-entropy would train another read-out than the one the network is built for and evaluated
with), cross-entropy for softmax networks and the ANN. The kernel loss is a sum over the batch
(published); the KL is then summed over the batch too, so that beta weighs the two terms per
sample as in TRADES (where both are batch means) and does not change with the batch size. For
softmax networks and the ANN both are batch means, as in TRADES. Both forwards keep their graph
(TRADES back-propagates through ``f(x)`` in the KL as well). ``out`` of the step (the training
accuracy) is the adversarial forward's, as for the other methods.
"""
import dataclasses
from typing import Any, Optional

import torch

from attack import Normalization, attack_bounds, trades_kl, training_attack
from config import ConfigError, parse_epsilon, train_epsilon
from layers import compute_loss, gradient_path_name, parse_gradient_path, use_gradient_path
from training.engine import evaluate

# The ATTACK.ft_method values whose steps and step size come from ATTACK.ft_steps / ft_step_size.
STEPPED_METHODS = ('pgd_rs', 'trades')


def trades_objective(settings, x_clean, beta):
    """``objective(model, x_adv, labels, dropout) -> (out_adv, loss)``: the TRADES outer loss
    (module docstring) for the batch whose clean input is ``x_clean``."""
    reduction = 'sum' if settings.loss == 'kernel' else 'batchmean'

    def objective(model, x_adv, labels, dropout):
        out_clean, _ = model(x_clean, dropout)
        out_adv, _ = model(x_adv, dropout)
        natural = compute_loss(out_clean, labels, settings)
        robust = trades_kl(out_adv.sum(-1).flatten(1), out_clean.sum(-1).flatten(1), reduction)
        return out_adv, natural + beta * robust
    return objective


@dataclasses.dataclass(frozen=True)
class Adversary:
    """The adversary of an adversarial-training run. ``eps`` in model units (the full eps;
    ``at_epoch`` applies the ramp), ``gradient`` a parsed gradient path (None = published)."""
    attack: Any
    eps: float
    bounds: Optional[tuple]
    gradient: Any
    trades_beta: Optional[float] = None  # set: the TRADES outer loss
    ramp_epochs: int = 0

    def at_epoch(self, epoch):
        """The adversary of ``epoch`` (from 0): eps grows linearly to its value over the first
        ``ramp_epochs`` epochs (``eps * (epoch + 1) / ramp_epochs``), then stays."""
        if self.ramp_epochs <= epoch + 1:
            return self
        return dataclasses.replace(self, eps=self.eps * (epoch + 1) / self.ramp_epochs)

    def craft(self, network, x, labels):
        """``(x_adv, objective or None)`` for one batch: the examples crafted on ``network``
        (unwrapped) through the gradient path, and the loss to train on when it is not the
        network's own loss of ``x_adv`` (TRADES)."""
        with use_gradient_path(network, self.gradient):
            x_adv = self.attack(network, x, labels, self.eps, self.bounds)
        if self.trades_beta is None:
            return x_adv, None
        return x_adv, trades_objective(network.settings, x, self.trades_beta)

    def describe(self, cfg):
        ramp = f", eps ramped over {self.ramp_epochs} epochs" if self.ramp_epochs else ''
        extra = f", beta={self.trades_beta:g}" if self.trades_beta is not None else ''
        steps = self.attack.params.get('steps')
        steps = f", {steps} steps of {self.attack.params['step_fraction']:.4g} eps" \
            if steps and 'step_fraction' in self.attack.params else ''
        return (f"adversarial training: {self.attack.name} eps={cfg['ATTACK']['train'][0]}"
                f"{steps}{extra}{ramp}, crafted with the {gradient_path_name(self.gradient)} "
                f"gradient")


def build_adversary(cfg):
    """The ``Adversary`` of a resolved config with ``DEFAULT.advtrain``."""
    attack_cfg = cfg['ATTACK']
    method = attack_cfg['ft_method']
    attack = training_attack(method)
    eps_pixels = train_epsilon(cfg)
    if method in STEPPED_METHODS:
        steps = attack_cfg['ft_steps']
        size = attack_cfg['ft_step_size']
        # ft_step_size is in pixel units like eps; kept as a fraction of eps (so it follows the ramp)
        fraction = 2.5 / steps if size is None or eps_pixels == 0 else \
            parse_epsilon(size, 'ATTACK.ft_step_size') / eps_pixels
        attack = dataclasses.replace(attack, params={**attack.params, 'steps': steps,
                                                     'step_fraction': fraction})
    return Adversary(
        attack=attack, eps=Normalization.of(cfg['Network']).to_model_units(eps_pixels),
        bounds=attack_bounds(cfg), gradient=parse_gradient_path(attack_cfg['ft_gradient']),
        trades_beta=float(attack_cfg['trades_beta']) if method == 'trades' else None,
        ramp_epochs=attack_cfg['ft_eps_ramp_epochs'])


# --- Model selection by robust accuracy on a held-out validation split --------------------------

def holdout_indices(n_total, n_val, seed):
    """``(train indices, validation indices)``: a permutation of ``range(n_total)`` drawn from
    ``seed`` alone (the same split on every rank and every resume), ``n_val`` held out. Both
    sorted, so the training subset keeps the data set's order for the sampler."""
    if n_val >= n_total:
        raise ConfigError(f"DEFAULT.val_samples ({n_val}) must be below the number of training "
                          f"samples ({n_total}): the validation images are held out of them")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_total, generator=generator)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def split_training_set(cfg, train_set):
    """``(train set, validation set or None)``: with ``DEFAULT.select: robust``,
    ``DEFAULT.val_samples`` images of the training set (after ``train_samples``) are held out and
    never trained on; otherwise the training set is unchanged."""
    default = cfg['DEFAULT']
    if default.get('select', 'clean') != 'robust':
        return train_set, None
    train_idx, val_idx = holdout_indices(len(train_set), default['val_samples'], default['seed'])
    return (torch.utils.data.Subset(train_set, train_idx),
            torch.utils.data.Subset(train_set, val_idx))


def selection_eps(cfg):
    """The eps (model units) of the selection PGD: ``ATTACK.train[0]``."""
    return Normalization.of(cfg['Network']).to_model_units(train_epsilon(cfg))


def validation_pgd_accuracy(model, loader, cfg, ctx, progress):
    """``(accuracy, n)`` of ``model`` (unwrapped) under PGD-7 at ``ATTACK.train[0]`` on the
    held-out split, crafted through ``ATTACK.ft_gradient``: the published backward cannot see
    the adaptive threshold, so a PGD through it would select a HoSNN by its gradient masking."""
    with use_gradient_path(model, cfg['ATTACK']['ft_gradient']):
        return evaluate(model, loader, ctx, progress, attack='pgd', eps=selection_eps(cfg),
                        bounds=attack_bounds(cfg), desc='validation pgd')
