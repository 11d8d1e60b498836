"""Losses and prediction (SPEC §5). Network outputs are ``[B, n_class, 1, 1, T]``."""
import torch
import torch.nn.functional as F

from .neuron import psp
from .settings import desired_pattern


def kernel_target(labels, n_class, n_steps, tau_s, dtype):
    """The target tensor of SPEC §5: psp(desired pattern) in the label's row, zeros elsewhere,
    ``[B, n_class, 1, 1, T]``."""
    pattern = torch.tensor(desired_pattern(n_steps), dtype=dtype, device=labels.device)
    filtered = psp(pattern, tau_s)
    target = torch.zeros(labels.shape[0], n_class, 1, 1, n_steps, dtype=dtype, device=labels.device)
    target[torch.arange(labels.shape[0], device=labels.device), labels] = filtered
    return target


def filtered_kernel_target(labels, settings, dtype):
    """psp(target): what the kernel loss compares the output with (the pattern is filtered
    twice -- faithful to the published code)."""
    target = kernel_target(labels, settings.n_class, settings.n_steps, settings.tau_s, dtype)
    return psp(target.movedim(-1, 0), settings.tau_s).movedim(0, -1)


def compute_loss(out, labels, settings):
    """The training loss: ``kernel`` (0.5 * squared error against the filtered target) or
    ``softmax`` (cross-entropy of the time-averaged output). ``settings``: the model's
    ``NetworkSettings`` (``model.settings``)."""
    if settings.loss == 'kernel':
        target = filtered_kernel_target(labels, settings, out.dtype)
        return 0.5 * torch.sum((out - target) ** 2)
    return F.cross_entropy(out.mean(-1).flatten(1), labels)


def attack_loss(out, labels, settings):
    """The loss the attacks ascend (SPEC §6): softmax models use the softmax loss, kernel models
    the cross-entropy of the output (class dim 1) against the filtered target as probabilities."""
    if settings.loss == 'kernel':
        return F.cross_entropy(out, filtered_kernel_target(labels, settings, out.dtype))
    return F.cross_entropy(out.mean(-1).flatten(1), labels)


def predict(out):
    """The predicted class: argmax over classes of the output summed over time."""
    return out.sum(-1).flatten(1).argmax(1)


def class_scores(model, x):
    """The scores ``predict`` takes the argmax of: the output summed over time, ``[B, n_class]``
    (the logits of the ANN twin). Every attack loss of robustness/ and TRADES' KL use them, so
    "the loss went up" and "the prediction changed" talk about the same numbers."""
    out, _ = model(x, False)
    return out.sum(-1).flatten(1)
