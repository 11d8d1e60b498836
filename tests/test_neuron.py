"""A hand-computed 3-step LIF and TA-LIF neuron (SPEC §4), forward and backward."""
import math

import pytest
import torch

from neuron_args import spike

TAU_M, TAU_S, V = 5.0, 3.0, 1.0


def approx(values):
    return pytest.approx(values, rel=1e-12, abs=1e-14)


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def surrogate(u):
    f = sigmoid(min(max(-(u - V) / 0.2, -8), 8))
    return f * (1 - f) / 0.2


def run(inputs, theta_v=None, nds=None):
    current = torch.tensor(inputs, dtype=torch.float64).view(3, 1, 1).requires_grad_(True)
    theta_v = None if theta_v is None else torch.tensor([theta_v], dtype=torch.float64,
                                                        requires_grad=True)
    nds = None if nds is None else torch.tensor([nds], dtype=torch.float64)
    y, mem = spike(current, theta_v, nds, TAU_M, TAU_S, V, record_nds=True)
    y.sum().backward()  # G_t = 1 for every t
    return y.flatten().tolist(), mem.flatten().tolist(), current.grad.flatten().tolist(), theta_v


def trace_gradients():
    """A_t = sum_{t' >= t} (1/tau_s)(1 - 1/tau_s)^(t'-t) for G = 1: 19/27, 5/9, 1/3."""
    return [19 / 27, 5 / 9, 1 / 3]


def test_lif_three_steps():
    # u: 0.8 (no spike) -> 0.8 - 0.16 + 0.7 = 1.34 (spike, reset) -> 0 + 1.2 = 1.2 (spike)
    y, mem, grad, _ = run([0.8, 0.7, 1.2])
    assert mem == approx([0.8, 1.34, 1.2])
    assert y == approx([0.0, 1 / 3, 1 / 3 + (1 - 1 / 3) / 3])
    expected = [a * surrogate(u) for a, u in zip(trace_gradients(), [0.8, 1.34, 1.2])]
    assert grad == approx(expected)


def test_ta_lif_three_steps():
    # theta_v = 0.2, NDS = 0.5:  e = u - 0.5;  theta = 1 + 0.2 * sum(e)
    # t0: u 0.8, e 0.3, theta 1.06 -> no spike
    # t1: u 1.34, e 0.84, theta 1.228 -> spike (the LIF spikes too)
    # t2: u 1.2, e 0.7, theta 1.368 -> NO spike (the LIF spikes: the threshold adapted)
    y, mem, grad, theta_v = run([0.8, 0.7, 1.2], theta_v=0.2, nds=[0.5, 0.5, 0.5])
    assert mem == approx([0.8, 1.34, 1.2])
    assert y == approx([0.0, 1 / 3, 1 / 3 - (1 / 3) / 3])
    expected = [a * surrogate(u) for a, u in zip(trace_gradients(), [0.8, 1.34, 1.2])]
    assert grad == approx(expected)  # the surrogate uses the static threshold V
    error_mean = (0.3 + 0.84 + 0.7) / 3  # Ebar = E / T
    expected_theta_v = 0.1 * error_mean * (-sum(expected) / 3)
    assert theta_v.grad.item() == approx(expected_theta_v)


def test_spike_needs_strictly_greater():
    y, _, _, _ = run([1.0, 0.0, 0.0])  # u = 1.0 == V: no spike
    assert y == [0.0, 0.0, 0.0]
