"""Losses on the class scores (``threats.class_scores``), per sample: cross-entropy, the CW margin
and AutoAttack's difference of logits ratio."""
import math

import torch
import torch.nn.functional as F


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

