"""layers/bptt.py: the exact-BPTT gradient path of the neuron against plain autograd through a
step-by-step loop (layers/reference.py), its forward against the published one, the surrogate
formulas, and the switch that installs it on a network."""
import math

import pytest
import torch

from conftest import SMALL_CONV_LAYERS
from layers import Network, bptt_cpu
from layers.bptt import BpttPath
from layers.dynamics import ta_lif_adjoint
from layers.gradients import gradient_path_name, parse_gradient_path, use_gradient_path
from layers.reference import AutogradPath
from layers.surrogate import SURROGATES
from neuron_args import spike

TAU_M, TAU_S, V = 5.0, 3.0, 1.0
N_STEPS = 5
ATOL = RTOL = 1e-10


# --- fixtures --------------------------------------------------------------------------------

def neuron_inputs(adaptive, shape=(6, 3, 4), seed=0):
    gen = torch.Generator().manual_seed(seed)
    current = (1.6 * torch.rand(N_STEPS, *shape, generator=gen, dtype=torch.float64)
               - 0.2).requires_grad_()
    theta_v = nds = None
    if adaptive:
        theta_v = (0.4 * torch.rand(shape[1:], generator=gen, dtype=torch.float64)).requires_grad_()
        nds = torch.rand(*shape[1:], N_STEPS, generator=gen, dtype=torch.float64)
    grad = torch.randn(N_STEPS, *shape, generator=gen, dtype=torch.float64)
    return current, theta_v, nds, grad


def small_network(model, loss='kernel', seed=0):
    network_cfg = {'n_steps': N_STEPS, 'tau_m': TAU_M, 'tau_s': TAU_S, 'model': model,
                   'tau_v': 1.5, 'is_bn': False, 'loss': loss, 'n_class': 4,
                   'save_target': False, 'ckpt_v': None}
    layers_cfg = SMALL_CONV_LAYERS
    torch.manual_seed(seed)
    net = Network(network_cfg, layers_cfg, [1, 8, 8]).double()
    gen = torch.Generator().manual_seed(seed + 1)
    image = torch.rand(3, 1, 8, 8, 1, generator=gen, dtype=torch.float64) * 2
    weights = torch.randn(3, 4, 1, 1, N_STEPS, generator=gen, dtype=torch.float64)
    return net, image.expand(-1, -1, -1, -1, N_STEPS), weights


def input_gradient(net, image, weights):
    """``(out, d<out, weights>/dx, {theta_v name: grad})``."""
    net.zero_grad(set_to_none=True)
    x = image.clone().requires_grad_(True)
    out, _ = net(x)
    (out * weights).sum().backward()
    theta_grads = {name: p.grad for name, p in net.named_parameters() if name.endswith('theta_v')}
    return out, x.grad, theta_grads


def with_hook(net, hook, fn):
    layers = [m for m in net.modules() if hasattr(m, 'gradient_path')]
    for layer in layers:
        layer.gradient_path = hook
    try:
        return fn()
    finally:
        for layer in layers:
            layer.gradient_path = None


# --- forward: the published one, bit for bit ------------------------------------------------

@pytest.mark.parametrize('adaptive', [False, True])
@pytest.mark.parametrize('record_nds', [False, True])
def test_neuron_forward_is_published(adaptive, record_nds):
    current, theta_v, nds, _ = neuron_inputs(adaptive)
    expected = spike(current, theta_v, nds, TAU_M, TAU_S, V, record_nds)
    for surrogate in SURROGATES:
        got = spike(current, theta_v, nds, TAU_M, TAU_S, V, record_nds, path=BpttPath(surrogate))
        assert got[0].grad_fn is not None
        assert torch.equal(got[0], expected[0])
        assert (got[1] is None) == (not record_nds)
        if record_nds:
            assert torch.equal(got[1], expected[1])


@pytest.mark.parametrize('model', ['LIF', 'ALIF'])
def test_network_forward_is_published(model):
    net, image, _ = small_network(model)
    with torch.no_grad():
        expected, _ = net(image)
    x = image.clone().requires_grad_(True)
    with use_gradient_path(net, 'bptt:arctan'):
        got, _ = net(x)
        with torch.no_grad():
            got_no_grad, _ = net(image)
    assert expected.abs().sum() > 0, "the test network should spike"
    assert torch.equal(got, expected) and torch.equal(got_no_grad, expected)


# --- backward: autograd through the plain loop ----------------------------------------------

@pytest.fixture(params=['compiled', 'torch'])
def adjoint_loop(request, monkeypatch):
    """Each backward test runs twice: with the compiled CPU loop (layers/bptt_cpu.c) and with
    the PyTorch loop of layers/dynamics.py (HOSNN_NO_CPU_KERNEL=1)."""
    monkeypatch.setenv('HOSNN_NO_CPU_KERNEL', '1' if request.param == 'torch' else '0')
    if request.param == 'compiled' and not bptt_cpu.available(torch.zeros(1)):
        pytest.skip('no C compiler: the compiled BPTT loop is not built')
    return request.param


@pytest.mark.parametrize('adaptive', [False, True])
@pytest.mark.parametrize('surrogate', list(SURROGATES))
def test_neuron_gradient_matches_autograd(adaptive, surrogate, adjoint_loop):
    current, theta_v, nds, grad = neuron_inputs(adaptive)
    inputs = [current] + ([theta_v] if adaptive else [])
    y, _ = spike(current, theta_v, nds, TAU_M, TAU_S, V, path=BpttPath(surrogate))
    got = torch.autograd.grad(y, inputs, grad)
    y_ref, _ = spike(current, theta_v, nds, TAU_M, TAU_S, V, path=AutogradPath(surrogate))
    expected = torch.autograd.grad(y_ref, inputs, grad)
    assert torch.equal(y, y_ref) or torch.allclose(y, y_ref, rtol=0, atol=1e-12)
    for a, b in zip(got, expected):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('model', ['LIF', 'ALIF'])
@pytest.mark.parametrize('surrogate,sharpness', [(name, None) for name in SURROGATES]
                         + [('sigmoid', 2.0), ('triangle', 0.5)])
def test_network_gradient_matches_autograd(model, surrogate, sharpness, adjoint_loop):
    net, image, weights = small_network(model)
    with use_gradient_path(net, BpttPath(surrogate, sharpness)):
        out, grad_x, grad_theta = input_gradient(net, image, weights)
    out_ref, grad_x_ref, grad_theta_ref = with_hook(
        net, AutogradPath(surrogate, sharpness), lambda: input_gradient(net, image, weights))
    assert torch.equal(out, out_ref)
    assert grad_x_ref.abs().max() > 0
    torch.testing.assert_close(grad_x, grad_x_ref, rtol=RTOL, atol=ATOL)
    assert set(grad_theta) == set(grad_theta_ref) and (len(grad_theta) > 0) == (model == 'ALIF')
    for name in grad_theta:
        assert grad_theta_ref[name].abs().max() > 0, name
        torch.testing.assert_close(grad_theta[name], grad_theta_ref[name], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('adaptive', [False, True])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_compiled_loop_agrees_with_the_torch_loop_on_threads(adaptive, dtype, monkeypatch):
    """float32 too, on two threads (the element range split mid-sample), every surrogate."""
    if not bptt_cpu.available(torch.zeros(1)):
        pytest.skip('no C compiler: the compiled BPTT loop is not built')
    monkeypatch.setattr(bptt_cpu, 'MIN_ELEMENTS_PER_THREAD', 100)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for surrogate in SURROGATES:
            current, theta_v, nds, grad = neuron_inputs(adaptive, shape=(5, 7, 9), seed=3)
            current, grad = (1.3 * current).to(dtype).detach().requires_grad_(), grad.to(dtype)
            if adaptive:
                theta_v, nds = theta_v.to(dtype).detach().requires_grad_(), nds.to(dtype)
            inputs = [current] + ([theta_v] if adaptive else [])
            grads = {}
            for loop in ('0', '1'):
                monkeypatch.setenv('HOSNN_NO_CPU_KERNEL', loop)
                y, _ = spike(current, theta_v, nds, TAU_M, TAU_S, V,
                             path=BpttPath(surrogate, 2 * SURROGATES[surrogate].default_sharpness))
                grads[loop] = torch.autograd.grad(y, inputs, grad)
            tolerance = 1e-5 if dtype == torch.float32 else 1e-12
            for a, b in zip(grads['0'], grads['1']):
                assert b.abs().max() > 0, surrogate
                torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance * b.abs().max(),
                                           msg=lambda m: f"{surrogate}: {m}")
    finally:
        torch.set_num_threads(threads)


def test_without_a_compiler_the_torch_loop_runs(monkeypatch, tmp_path):
    bptt_cpu._library.cache_clear()
    monkeypatch.setenv('CC', str(tmp_path / 'no-such-compiler'))
    monkeypatch.setenv('HOSNN_NO_CPU_KERNEL', '0')
    try:
        assert not bptt_cpu.available(torch.zeros(1))
        current, _, _, grad = neuron_inputs(False)
        y, _ = spike(current, None, None, TAU_M, TAU_S, V, path=BpttPath('arctan'))
        assert torch.autograd.grad(y, current, grad)[0].abs().max() > 0
    finally:
        bptt_cpu._library.cache_clear()


def test_the_compiled_loop_covers_every_surrogate():
    assert set(bptt_cpu.SURROGATE_KINDS) == set(SURROGATES)


def test_gradient_flows_through_the_threshold():
    """The TA-LIF threshold is part of the graph: cutting it changes the input gradient."""
    net, image, weights = small_network('ALIF')
    with use_gradient_path(net, 'bptt:sigmoid'):
        _, grad_x, _ = input_gradient(net, image, weights)
    _, grad_cut, _ = with_hook(net, AutogradPath('sigmoid', through_threshold=False),
                               lambda: input_gradient(net, image, weights))
    assert (grad_x - grad_cut).abs().max() > 1e-3 * grad_x.abs().max()


def test_theta_v_gets_no_gradient_when_frozen():
    current, theta_v, nds, grad = neuron_inputs(True)
    theta_v = theta_v.detach()
    y, _ = spike(current, theta_v, nds, TAU_M, TAU_S, V, path=BpttPath('sigmoid'))
    y.backward(grad)
    assert theta_v.grad is None and current.grad is not None


def test_second_backward():
    """LIF keeps its saved tensors (a second backward is the same); TA-LIF consumes them."""
    current, _, _, grad = neuron_inputs(False)
    y, _ = spike(current, None, None, TAU_M, TAU_S, V, path=BpttPath('sigmoid'))
    first = torch.autograd.grad(y, current, grad, retain_graph=True)[0]
    assert torch.equal(torch.autograd.grad(y, current, grad)[0], first)
    current, theta_v, nds, grad = neuron_inputs(True)
    y, _ = spike(current, theta_v, nds, TAU_M, TAU_S, V, path=BpttPath('sigmoid'))
    torch.autograd.grad(y, current, grad, retain_graph=True)
    with pytest.raises(RuntimeError, match='runs once per forward'):
        torch.autograd.grad(y, current, grad)


class SoftNeuron(torch.autograd.Function):
    """The neuron with a *smooth* spike s_t = sigmoid(k (u_t - theta_t)), whose backward is
    dynamics.ta_lif_adjoint: gradcheck then tests the hand-derived recursion against finite
    differences (the real forward's step has no useful finite differences)."""

    @staticmethod
    def forward(ctx, current, theta_v, nds, sharpness):
        leak = 1 - 1 / TAU_M
        v = torch.zeros_like(current[0])
        y = torch.zeros_like(current[0])
        theta = torch.full_like(current[0], V)
        membranes, spikes, slopes, traces = [], [], [], []
        for t in range(current.shape[0]):
            u = leak * v + current[t]
            e = u - nds[..., t]
            theta = theta + theta_v * e
            s = torch.sigmoid(sharpness * (u - theta))
            v = u * (1 - s)
            y = y + (s - y) / TAU_S
            membranes.append(u), spikes.append(s), traces.append(y)
            slopes.append(sharpness * s * (1 - s))
        ctx.save_for_backward(*(torch.stack(z) for z in (membranes, spikes, slopes)), theta_v, nds)
        return torch.stack(traces)

    @staticmethod
    def backward(ctx, grad_traces):
        membrane, spikes, slopes, theta_v, nds = ctx.saved_tensors
        grads = ta_lif_adjoint(grad_traces, membrane.clone(),
                               lambda t: (slopes[t].clone(), 1 - spikes[t]),
                               1 - 1 / TAU_M, TAU_S, theta_v, nds.movedim(-1, 0))
        return grads[0], grads[1], None, None


def test_backward_recursion_gradcheck():
    gen = torch.Generator().manual_seed(3)
    current = torch.rand(4, 2, 3, generator=gen, dtype=torch.float64).requires_grad_()
    theta_v = (0.5 * torch.rand(3, generator=gen, dtype=torch.float64)).requires_grad_()
    nds = torch.rand(3, 4, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda c, tv: SoftNeuron.apply(c, tv, nds, 3.0),
                                    (current, theta_v))


# --- the surrogates ---------------------------------------------------------------------------

PRIMITIVES = {  # an antiderivative of each surrogate (inside the published clamp)
    'published': lambda x, k: torch.sigmoid(k * x),
    'sigmoid': lambda x, k: torch.sigmoid(k * x),
    'fast-sigmoid': lambda x, k: 0.5 * k * x / (1 + (k * x).abs()),
    'arctan': lambda x, k: torch.atan(math.pi / 2 * k * x) / math.pi,
    'triangle': lambda x, k: torch.where(x.abs() < 1 / k,
                                         k * x - torch.sign(x) * (k * x) ** 2 / 2, 0.5 * torch.sign(x)),
    'rectangle': lambda x, k: torch.clamp(k * x, -0.5, 0.5),
}


@pytest.mark.parametrize('surrogate', list(SURROGATES))
def test_surrogate_formulas(surrogate):
    derivative, k = SURROGATES[surrogate]
    # away from the kinks of triangle and rectangle
    x = torch.linspace(-1.5, 1.5, 601, dtype=torch.float64)[1::2].requires_grad_()
    x = x[(x.detach().abs() - 0.4).abs() > 1e-3]
    x = x[(x.detach().abs() - 0.8).abs() > 1e-3]
    (slope,) = torch.autograd.grad(PRIMITIVES[surrogate](x, k).sum(), x)
    torch.testing.assert_close(derivative(x.detach(), k), slope, rtol=1e-12, atol=1e-12)
    # unit area (the published one: inside its clamp, |x| < 8 * 0.2); peak = the published 1.25
    reach = 1.6 if surrogate == 'published' else 400
    grid = torch.linspace(-reach, reach, 800001, dtype=torch.float64)
    area = torch.trapezoid(derivative(grid, k), grid).item()
    assert area == pytest.approx(1.0, abs=2e-3)
    assert derivative(torch.zeros(1, dtype=torch.float64), k).item() == pytest.approx(1.25)


def test_published_surrogate_is_the_spec_formula():
    u = torch.linspace(-2, 4, 101, dtype=torch.float64)
    f = torch.sigmoid(torch.clamp(-(u - V) / 0.2, -8, 8))
    derivative, k = SURROGATES['published']
    torch.testing.assert_close(derivative(u - V, k), f * (1 - f) / 0.2, rtol=1e-14, atol=0)


# --- the switch and the names -----------------------------------------------------------------

def test_use_gradient_path_restores_the_published_path():
    net, image, weights = small_network('ALIF')
    before = input_gradient(net, image, weights)
    with use_gradient_path(net, 'bptt:triangle:2'):
        during = input_gradient(net, image, weights)
        assert all(m.gradient_path == BpttPath('triangle', 2) for m in net.modules()
                   if hasattr(m, 'gradient_path'))
    assert not torch.allclose(during[1], before[1])
    with pytest.raises(RuntimeError, match='boom'):
        with use_gradient_path(net, BpttPath('sigmoid')):
            raise RuntimeError('boom')
    assert all(m.gradient_path is None for m in net.modules() if hasattr(m, 'gradient_path'))
    with use_gradient_path(net, 'published'), use_gradient_path(net, None):
        after = input_gradient(net, image, weights)
    for a, b in zip(before[:2], after[:2]):
        assert torch.equal(a, b)
    assert before[2].keys() == after[2].keys()
    assert all(torch.equal(before[2][k], after[2][k]) for k in before[2])


def test_use_gradient_path_nests():
    net, _, _ = small_network('LIF')
    layer = net.layers[0]
    with use_gradient_path(net, 'bptt:sigmoid'):
        with use_gradient_path(net, 'bptt:arctan'):
            assert layer.gradient_path == BpttPath('arctan')
        assert layer.gradient_path == BpttPath('sigmoid')
    assert layer.gradient_path is None


def test_names_and_parsing():
    assert gradient_path_name(None) == gradient_path_name('published') == 'published'
    assert gradient_path_name('bptt:sigmoid:5') == 'bptt:sigmoid:5'
    assert gradient_path_name('bptt:sigmoid') == 'bptt:sigmoid:5'
    assert gradient_path_name('bptt') == 'bptt:published:5'
    assert gradient_path_name(BpttPath('arctan', 0.25)) == 'bptt:arctan:0.25'
    for name in SURROGATES:  # the name parses back to the same path
        path = BpttPath(name)
        assert parse_gradient_path(gradient_path_name(path)) == path
    assert parse_gradient_path('published') is None


@pytest.mark.parametrize('text,match', [
    ('bptt:sigmod', 'unknown surrogate .sigmod.*choices|sigmoid, fast-sigmoid'),
    ('bptt:sigmoid:x', 'not a number'),
    ('bptt:sigmoid:-1', '> 0'),
    ('bptt:sigmoid:nan', '> 0'),
    ('bptt:sigmoid:1:2', 'unknown gradient path'),
    ('exact', 'unknown gradient path'),
])
def test_bad_paths_are_clear_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_gradient_path(text)
    with pytest.raises(ValueError, match='choices: published, sigmoid'):
        BpttPath('nope')
