"""The reference the exact BPTT rule is checked and timed against: SPEC §4's loop written out
step by step in plain differentiable tensor ops, the spike a straight-through step whose
derivative is a surrogate, differentiated by autograd. Slow (a graph node per op and step) and
obviously right; ``tests/test_bptt.py`` and ``tests/test_train_gradient.py`` compare
``layers/bptt.py`` with it, ``scripts/bench_bptt.py`` times both. It lives in the package, not in
tests/, so that the benchmark does not import test code.
"""
import torch

from .dynamics import TaLif
from .surrogate import SURROGATES


def straight_through(x, derivative, sharpness):
    """H(x) forward, ``derivative(x)`` backward: ``H + (a - a.detach())`` with ``da/dx = g(x)``."""
    a = x * derivative(x, sharpness).detach()
    return (x > 0).to(x.dtype) + (a - a.detach())


class AutogradPath:
    """A gradient path (``SpikingLayer.gradient_path``) for the LIF and TA-LIF neurons:
    ``AutogradPath('sigmoid', sharpness=None, through_threshold=True)``. With
    ``through_threshold=False`` the TA-LIF threshold recursion is cut from the graph (a test that
    the threshold's gradient matters). Records no NDS (returns ``None`` for it)."""

    def __init__(self, surrogate, sharpness=None, through_threshold=True):
        self.derivative, default = SURROGATES[surrogate]
        self.sharpness = default if sharpness is None else sharpness
        self.through_threshold = through_threshold

    def __call__(self, dynamics, current, state, tau_m, tau_s, threshold, record_nds=False):
        adaptive = issubclass(dynamics, TaLif)  # the two published types; nothing else
        if not adaptive and state:
            raise ValueError(f"AutogradPath knows LIF and TA-LIF only, not {dynamics.__name__}")
        theta_v, nds = state if adaptive else (None, None)
        u = torch.zeros_like(current[0])
        y = torch.zeros_like(current[0])
        theta = torch.full_like(current[0], threshold)
        traces = []
        for t in range(current.shape[0]):
            u = u - u / tau_m + current[t]
            if adaptive:
                step = theta_v * (u - nds[..., t])
                theta = theta + (step if self.through_threshold else step.detach())
            s = straight_through(u - theta, self.derivative, self.sharpness)
            u = u * (1 - s)
            y = y + (s - y) / tau_s
            traces.append(y)
        return torch.stack(traces), None
