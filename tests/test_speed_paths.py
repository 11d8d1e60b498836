"""The fast paths of layers/ against straightforward float64 references (the golden tests cover
the full networks; these cover the cases the golden cases do not reach)."""
import pytest
import torch
import torch.nn.functional as F

from layers import neuron
from neuron_args import spike
from layers.pooling import WindowSum

RTOL, ATOL = 1e-10, 1e-12


def trace_kernel(n_steps, tau_s, dtype, device):
    """M[t, t'] = P[t' - t] = (1/tau_s)(1 - 1/tau_s)^(t'-t) for t' >= t, else 0.

    dL/ds_t = sum_t' M[t, t'] dL/dy_t'  (how a spike at t feeds every later trace value).
    neuron.trace_backward applies M as a recurrence; this explicit form is the reference."""
    steps = torch.arange(n_steps, device=device)
    lag = steps[None, :] - steps[:, None]
    decay = (1 - 1 / tau_s) ** lag.clamp(min=0).to(dtype)
    return torch.where(lag >= 0, decay / tau_s, torch.zeros((), dtype=dtype, device=device))


class ReferenceSpike(torch.autograd.Function):
    """SPEC §4 written out literally (the first implementation of layers/neuron.py)."""

    @staticmethod
    def forward(ctx, current, theta_v, nds, tau_m, tau_s, threshold, record_nds):
        adaptive = theta_v is not None
        u = torch.zeros_like(current[0])
        y = torch.zeros_like(current[0])
        theta = torch.full_like(current[0], threshold) if adaptive else threshold
        error_sum = torch.zeros_like(current[0])
        traces, surrogate, mem_means = [], [], []
        for t in range(current.shape[0]):
            u = u - u / tau_m + current[t]
            if adaptive:
                e = u - nds[..., t]
                theta = theta + theta_v * e
                error_sum = error_sum + e
            spike = (u > theta).to(u.dtype)
            f = torch.sigmoid(torch.clamp(-(u - threshold) / 0.2, -8, 8))
            surrogate.append(f * (1 - f) / 0.2)
            mem_means.append(u.mean(0))
            u = u * (1 - spike)
            y = y + (spike - y) / tau_s
            traces.append(y)
        ctx.tau_s, ctx.adaptive = tau_s, adaptive
        ctx.save_for_backward(torch.stack(surrogate), (error_sum / current.shape[0]).sum(0))
        mem_mean = torch.stack(mem_means, dim=-1) if record_nds else None
        return torch.stack(traces), mem_mean

    @staticmethod
    def backward(ctx, grad_traces, _):
        surrogate, mean_error = ctx.saved_tensors
        n_steps = surrogate.shape[0]
        kernel = trace_kernel(n_steps, ctx.tau_s, grad_traces.dtype, grad_traces.device)
        grad_current = (kernel @ grad_traces.reshape(n_steps, -1)).view_as(grad_traces) * surrogate
        grad_theta_v = None
        if ctx.adaptive:
            grad_theta_v = 0.1 * mean_error * (-grad_current.mean(dim=(0, 1)))
        return grad_current, grad_theta_v, None, None, None, None, None


def _inputs(adaptive, shape=(4, 3, 5, 6), n_steps=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    current = (2 * torch.rand(n_steps, *shape, generator=gen, dtype=torch.float64)).requires_grad_()
    theta_v = nds = None
    if adaptive:
        theta_v = (0.3 * torch.rand(shape[1:], generator=gen, dtype=torch.float64)).requires_grad_()
        nds = torch.rand(*shape[1:], n_steps, generator=gen, dtype=torch.float64)
    grad = torch.randn(n_steps, *shape, generator=gen, dtype=torch.float64)
    return current, theta_v, nds, grad


@pytest.mark.parametrize('adaptive', [False, True])
@pytest.mark.parametrize('record_nds', [False, True])
def test_neuron_matches_reference(adaptive, record_nds):
    current, theta_v, nds, grad = _inputs(adaptive)
    args = (nds, 5.0, 3.0, 1.0, record_nds)
    expected, expected_mem = ReferenceSpike.apply(current, theta_v, *args)
    inputs = [current] + ([theta_v] if adaptive else [])
    expected_grads = torch.autograd.grad(expected, inputs, grad)
    actual, actual_mem = spike(current, theta_v, *args)
    actual_grads = torch.autograd.grad(actual, inputs, grad)
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)
    for a, e in zip(actual_grads, expected_grads):
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)
    if record_nds:
        torch.testing.assert_close(actual_mem, expected_mem, rtol=RTOL, atol=ATOL)
        assert actual_mem.shape == (*current.shape[2:], current.shape[0])
    else:
        assert actual_mem is None
    assert (actual > 0).any() and (actual == 0).any()  # spikes and silence both exercised


@pytest.mark.parametrize('adaptive', [False, True])
def test_neuron_without_grad_is_the_same(adaptive):
    current, theta_v, nds, _ = _inputs(adaptive, seed=1)
    with_grad, mem = spike(current, theta_v, nds, 5.0, 3.0, 1.0, True)
    with torch.no_grad():
        without, mem_ng = spike(current, theta_v, nds, 5.0, 3.0, 1.0, True)
    assert with_grad.grad_fn is not None and without.grad_fn is None
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)
    torch.testing.assert_close(mem_ng, mem, rtol=0, atol=0)


def test_neuron_non_contiguous_output_grad():
    current, theta_v, nds, grad = _inputs(True, seed=2)
    grad_t = grad.transpose(1, 2).contiguous().transpose(1, 2)  # same values, new strides
    out, _ = spike(current, theta_v, nds, 5.0, 3.0, 1.0)
    g1 = torch.autograd.grad(out, current, grad, retain_graph=True)[0]
    g2 = torch.autograd.grad(out, current, grad_t, retain_graph=True)[0]
    g3 = torch.autograd.grad(out, current, grad)[0]  # saved tensors untouched by a backward
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    torch.testing.assert_close(g1, g3, rtol=0, atol=0)


def test_trace_backward_is_the_kernel_product():
    grad = torch.randn(7, 3, 4, dtype=torch.float64)
    kernel = trace_kernel(7, 3.0, torch.float64, 'cpu')
    expected = (kernel @ grad.reshape(7, -1)).view_as(grad)
    torch.testing.assert_close(neuron.trace_backward(grad, 3.0), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('size,kernel', [((24, 24), (2, 2)), ((9, 7), (2, 2)), ((12, 9), (3, 2))])
def test_window_sum_matches_the_convolution(size, kernel):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, *size, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(kernel, generator=gen, dtype=torch.float64)  # not uniform on purpose
    expected = F.conv2d(x.reshape(-1, 1, *size), weight[None, None], None, kernel)
    expected = expected.view(6, 4, *expected.shape[-2:])
    actual = WindowSum.apply(x, weight)
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)
    grad = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    (g_expected,) = torch.autograd.grad(expected, x, grad)
    (g_actual,) = torch.autograd.grad(actual, x, grad)
    torch.testing.assert_close(g_actual, g_expected, rtol=RTOL, atol=ATOL)


def test_pooling_layer_uses_its_weight_buffer_and_falls_back():
    from layers.pooling import PoolingLayer
    x = torch.rand(5, 2, 3, 8, 8, dtype=torch.float64)
    fast = PoolingLayer('p', {'type': 'pooling', 'kernel_size': 2}, (3, 8, 8)).double()
    fast.load_state_dict({'weight': torch.full((1, 1, 2, 2, 1), 0.7, dtype=torch.float64)})
    out, _ = fast(x)
    torch.testing.assert_close(out, 0.7 * 4 * F.avg_pool2d(x.flatten(0, 1), 2).view(5, 2, 3, 4, 4))
    cfg = {'type': 'pooling', 'kernel_size': 3, 'stride': 2, 'padding': 1}
    overlapping = PoolingLayer('p', cfg, (3, 8, 8)).double()
    out, _ = overlapping(x)
    expected = 1.1 * 9 * F.avg_pool2d(x.flatten(0, 1), 3, 2, 1, count_include_pad=True)
    torch.testing.assert_close(out, expected.view(5, 2, 3, 4, 4))


@pytest.mark.parametrize('channels,size,kernel,stride,padding,dilation', [
    ((1, 15), (28, 28), (5, 5), (1, 1), (0, 0), (1, 1)),   # Fashion-MNIST's first layer
    ((3, 4), (10, 9), (3, 3), (1, 1), (1, 1), (1, 1)),     # CIFAR's, padded
    ((2, 3), (11, 12), (3, 2), (2, 3), (1, 2), (2, 1)),    # stride, padding, dilation
])
def test_few_channel_conv_gradient_matches_autograd(channels, size, kernel, stride, padding,
                                                     dilation):
    from layers.conv import FewChannelConv2d
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, channels[0], *size, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(channels[1], channels[0], *kernel, generator=gen, dtype=torch.float64,
                         requires_grad=True)
    expected = F.conv2d(x, weight, None, stride, padding, dilation)
    actual = FewChannelConv2d.apply(x, weight, stride, padding, dilation)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    grad = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    for g_actual, g_expected in zip(torch.autograd.grad(actual, (x, weight), grad),
                                    torch.autograd.grad(expected, (x, weight), grad,
                                                        retain_graph=True)):
        torch.testing.assert_close(g_actual, g_expected, rtol=RTOL, atol=ATOL)
    # the input gradient alone (an attack: the weight is frozen)
    (g_input,) = torch.autograd.grad(FewChannelConv2d.apply(x, weight.detach(), stride, padding,
                                                            dilation), x, grad)
    torch.testing.assert_close(g_input, torch.autograd.grad(expected, x, grad)[0], rtol=RTOL,
                               atol=ATOL)


def test_conv_layer_takes_the_few_channel_path_only_for_an_input_gradient_on_the_cpu():
    from layers import conv
    x = torch.rand(10, 1, 12, 12, dtype=torch.float64)
    weight = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    geometry = ((1, 1), (0, 0), (1, 1))
    assert conv.conv2d(x, weight, *geometry).grad_fn.name() != 'FewChannelConv2dBackward'
    assert conv.conv2d(x.requires_grad_(), weight, *geometry).grad_fn.name() == \
        'FewChannelConv2dBackward'
    wide = torch.rand(10, conv.FEW_INPUT_CHANNELS, 12, 12, dtype=torch.float64, requires_grad=True)
    wide_weight = torch.randn(4, conv.FEW_INPUT_CHANNELS, 3, 3, dtype=torch.float64)
    assert conv.conv2d(wide, wide_weight, *geometry).grad_fn.name() != 'FewChannelConv2dBackward'


def test_the_commands_keep_freed_memory_on_glibc():
    # init_distributed (every command) and the bench call it; on Linux with glibc it applies.
    import platform
    from runtime.allocator import keep_freed_memory
    glibc = platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'
    assert keep_freed_memory() == glibc
