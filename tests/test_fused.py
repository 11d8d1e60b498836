"""The Triton neuron kernels (layers/fused.py) against the PyTorch loop: forward trace, input and
theta_v gradients, the no-grad path, and a whole network. On CUDA when there is a GPU; on the CPU
through Triton's interpreter (TRITON_INTERPRET=1, in a subprocess: it must be set before import)."""
import os
import subprocess
import sys

import pytest
import torch

from layers import Network, compute_loss, fused
from neuron_args import spike

TESTS = os.path.dirname(os.path.abspath(__file__))
MISMATCH = 1e-3  # a spike may flip where u - theta is within float32 rounding of 0


def _both_paths(fn):
    """``fn()`` with the fused kernels, then with the PyTorch loop."""
    fast = fn()
    os.environ['HOSNN_NO_TRITON'] = '1'
    try:
        plain = fn()
    finally:
        del os.environ['HOSNN_NO_TRITON']
    return fast, plain


def _assert_match(fast, plain, what):
    for a, b in zip(fast, plain):
        if a is None:
            continue
        off = (a - b).abs() > 1e-5 + 1e-4 * b.abs()
        assert off.double().mean() <= MISMATCH, f"{what}: {off.sum()} of {off.numel()} differ"


def check_fused_matches(device):
    torch.manual_seed(0)
    T, B, shape = 5, 8, (6, 10, 10)
    for adaptive in (False, True):
        current = (torch.randn(T, B, *shape, device=device) * 0.8 + 0.5)
        theta_v = torch.rand(shape, device=device) * 0.5 if adaptive else None
        nds = torch.rand(*shape, T, device=device) if adaptive else None
        grad = torch.randn(T, B, *shape, device=device)
        assert fused.available(current)

        def run():
            x = current.clone().requires_grad_(True)
            tv = theta_v.clone().requires_grad_(True) if adaptive else None
            y, _ = spike(x, tv, nds, 5.0, 3.0, 1.0)
            y.backward(grad)
            with torch.no_grad():
                y_no_grad, _ = spike(x, tv, nds, 5.0, 3.0, 1.0)
            return y.detach(), y_no_grad, x.grad, tv.grad if adaptive else None
        fast, plain = _both_paths(run)
        _assert_match(fast, plain, f"neuron adaptive={adaptive}")

    layers = {'conv_1': dict(type='conv', in_channels=1, out_channels=4, kernel_size=5,
                             weight_scale=2, threshold=1),
              'pooling_1': dict(type='pooling', kernel_size=2),
              'FC_1': dict(type='linear', n_inputs=4 * 12 * 12, n_outputs=16, weight_scale=2,
                           threshold=1),
              'output': dict(type='linear', n_inputs=16, n_outputs=10, weight_scale=2, threshold=1)}
    network_cfg = dict(n_steps=5, tau_m=5, tau_s=3, model='ALIF', tau_v=1.5, loss='kernel',
                       n_class=10)
    net = Network(network_cfg, layers, [1, 28, 28]).to(device)
    x = torch.randn(4, 1, 28, 28, 5, device=device)
    labels = torch.arange(4, device=device)

    def run_net():
        net.zero_grad()
        out, _ = net(x, False)
        compute_loss(out, labels, net.settings).backward()
        return [out.detach()] + [p.grad.clone() for p in net.parameters()]
    fast, plain = _both_paths(run_net)
    _assert_match(fast, plain, 'network')


def test_plain_loop_on_float64_and_cpu():
    """The golden float64 path never takes the fused kernels."""
    assert not fused.available(torch.zeros(1, dtype=torch.float64, device='cuda'
                                           if torch.cuda.is_available() else 'cpu'))
    if os.environ.get('TRITON_INTERPRET') != '1':
        assert not fused.available(torch.zeros(1))


@pytest.mark.slow
@pytest.mark.skipif(fused.triton is None, reason='Triton is not installed')
def test_fused_kernels_in_the_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET='1')
    env.pop('HOSNN_NO_TRITON', None)
    proc = subprocess.run(
        [sys.executable, '-c', 'import conftest, test_fused; test_fused.check_fused_matches("cpu")'],
        cwd=TESTS, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(fused.triton is None or not torch.cuda.is_available(), reason='needs CUDA')
def test_fused_kernels_on_cuda():
    check_fused_matches('cuda')
