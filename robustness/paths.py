"""Gradient paths: the backward an attack differentiates, and the class-score function that uses it.

A path is a name. ``autograd``: plain autograd through the model's forward (a model with no
spiking layers has only this one). ``published``: the spiking layers' published surrogate
backward (for a spiking model this is what plain autograd does). ``bptt:<shape>:<k>``: the exact
BPTT gradient of ``layers/bptt.py`` with surrogate ``shape`` at sharpness ``k``.
A model may also carry its own paths (:func:`custom_gradient_paths`: ``robustness.api`` sets
them for a network not built from this project's layers): each name is a context-manager factory
that switches the model's backward (e.g. swaps a SpikingJelly surrogate); within it, plain
autograd is that path. ``ensemble:<path>+<path>+...``: at every step, the mean of the members' input gradients, each
normalised per sample (EOT over the backward: the forward is bit-identical under every path, so
only the gradient is averaged; without the normalisation the sharpest surrogate, whose gradients
are the largest, would decide alone).
"""
from contextlib import contextmanager

import torch

from layers.gradients import PUBLISHED, gradient_path_name, use_gradient_path

from layers.surrogate import SURROGATES
from robustness.threats import class_scores

AUTOGRAD = 'autograd'
ENSEMBLE = 'ensemble:'
CUSTOM_PATHS = 'custom_gradient_paths'  # model attribute: {name: zero-argument context-manager factory}


def custom_gradient_paths(model):
    """The gradient paths ``model`` brings itself (its ``custom_gradient_paths`` attribute, a dict
    ``{name: factory}``; empty when it has none)."""
    return dict(getattr(model, CUSTOM_PATHS, None) or {})


def is_spiking(model):
    """Whether ``model`` has spiking layers whose backward a gradient path can replace."""
    return any(hasattr(module, 'gradient_path') for module in model.modules())


def gradient_paths_for(model, suite):
    """The gradient paths a suite starts from for ``model`` (the published backward first); the
    full suite's sweep sharpens the surrogate families further (``plan.Sweep``). A model with no
    spiking layers has one path: plain autograd."""
    if not is_spiking(model):
        return [AUTOGRAD] if suite == 'published' else [AUTOGRAD, *custom_gradient_paths(model)]
    if suite == 'published':
        return [PUBLISHED]
    if suite == 'quick':
        return [PUBLISHED, 'bptt:published:5', 'bptt:fast-sigmoid:2.5']
    sweep = [PUBLISHED]
    for shape, surrogate in SURROGATES.items():
        for factor in (0.5, 1, 2):
            sweep.append(sharpened(shape, surrogate.default_sharpness * factor))
    return sweep


def sharpened(shape, sharpness):
    """The canonical name of ``bptt:<shape>:<sharpness>`` (``bptt:fast-sigmoid:10``)."""
    return gradient_path_name(f"bptt:{shape}:{sharpness}")


def ensemble_name(paths):
    return ENSEMBLE + '+'.join(paths)


def ensemble_members(path):
    """``ensemble:a+b`` -> ``['a', 'b']``; a plain path -> ``[path]``."""
    if not path.startswith(ENSEMBLE):
        return [path]
    members = [m for m in path[len(ENSEMBLE):].split('+') if m]
    if not members or any(m.startswith(ENSEMBLE) for m in members):
        raise ValueError(f"gradient path {path!r}: expected 'ensemble:<path>+<path>+...'")
    return members


def _layer_path(path):
    """The spiking layers' hook for ``path`` (None: leave the published backward in place)."""
    return None if path in (AUTOGRAD, PUBLISHED) else path


def _path_context(model, path):
    """The context in which plain autograd through ``model`` is gradient path ``path``."""
    custom = custom_gradient_paths(model)
    if path in custom:
        return custom[path]()
    return use_gradient_path(model, _layer_path(path))


class _EnsembleScores(torch.autograd.Function):
    """Class scores whose backward is the mean of the members' normalised input gradients. The
    forward is the first member's, kept with its graph for that member's backward (the forward is
    the same under every path; only the other members recompute it)."""

    @staticmethod
    def forward(ctx, x, model, members):
        ctx.save_for_backward(x)
        ctx.model, ctx.members = model, members
        ctx.first = None
        with _path_context(model, members[0]):
            if not ctx.needs_input_grad[0]:
                return class_scores(model, x)
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                scores = class_scores(model, leaf)
        ctx.first = leaf, scores
        return scores.detach()

    @staticmethod
    def backward(ctx, grad_scores):
        (x,) = ctx.saved_tensors
        total = torch.zeros_like(x)
        for index, member in enumerate(ctx.members):
            with torch.enable_grad(), _path_context(ctx.model, member):
                if index == 0 and ctx.first is not None:
                    leaf, scores = ctx.first
                    ctx.first = None  # its graph is used once
                else:
                    leaf = x.detach().requires_grad_(True)
                    scores = class_scores(ctx.model, leaf)
                (grad,) = torch.autograd.grad(scores, leaf, grad_scores)
            # Per-sample L1 normalisation: every member gets the same say in the direction.
            norm = grad.flatten(1).abs().mean(1).clamp_min(torch.finfo(grad.dtype).tiny)
            total += grad / norm.view(-1, *([1] * (grad.dim() - 1)))
        return total / len(ctx.members), None, None


@contextmanager
def _input_gradient_only(model):
    """Within the block, ``model``'s parameters require no gradient (restored after): an attack
    differentiates the input only, and a custom backward (the TA-LIF BPTT step's ``theta_v``
    term, ``layers.conv.FewChannelConv2d``'s weight gradient) computes what its inputs require,
    not what the caller asks for."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


@contextmanager
def scores_through(model, path):
    """Within the block, ``scores(x)`` gives ``model``'s class scores with the input gradient of
    gradient path ``path``. Raises ValueError naming a path ``model`` cannot take."""
    members = ensemble_members(path)
    custom = custom_gradient_paths(model)
    if not is_spiking(model) and any(m != AUTOGRAD and m not in custom for m in members):
        raise ValueError(f"gradient path {path!r}: the model has no spiking layers, "
                         f"its only paths are {', '.join([AUTOGRAD, *custom])}")
    with _input_gradient_only(model):
        if len(members) > 1:
            yield lambda x: _EnsembleScores.apply(x, model, tuple(members))
            return
        with _path_context(model, members[0]):
            yield lambda x: class_scores(model, x)
