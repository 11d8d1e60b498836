"""Training through the exact BPTT gradient (Network.train_gradient): the parameter gradients of
the training step (weights and theta_v) against autograd through the step-by-step reference
(layers/reference.py) in float64 with the kernel loss, the published default untouched, the key's
validation, and a small main.py run with it."""
import copy

import pytest
import torch

import main
from config import load_config
from conftest import ROOT, SMALL_CONV_LAYERS
from layers import Network, compute_loss, use_gradient_path
from layers.bptt import BpttPath
from layers.config_keys import ConfigError
from layers.reference import AutogradPath
from training.engine import GRAD_CLIP_NORM, train_step
from conftest import read_results as results, settings

N_STEPS = 5
RTOL = ATOL = 1e-10
GRADIENT = 'bptt:fast-sigmoid:5'


def small_network(model, train_gradient=GRADIENT, seed=0):
    """Conv + pooling + two linears (TA-LIF in all but the output), kernel loss, float64."""
    network_cfg = {'n_steps': N_STEPS, 'tau_m': 5.0, 'tau_s': 3.0, 'model': model, 'tau_v': 1.5,
                   'is_bn': False, 'loss': 'kernel', 'n_class': 4, 'save_target': False,
                   'ckpt_v': None, 'train_gradient': train_gradient}
    layers_cfg = SMALL_CONV_LAYERS
    torch.manual_seed(seed)
    net = Network(network_cfg, layers_cfg, [1, 8, 8]).double()
    gen = torch.Generator().manual_seed(seed + 1)
    x = (2 * torch.rand(6, 1, 8, 8, 1, generator=gen, dtype=torch.float64)).expand(
        -1, -1, -1, -1, N_STEPS).contiguous()
    labels = torch.randint(4, (6,), generator=gen)
    return net, x, labels


def parameter_gradients(net, x, labels, path=None):
    """``{name: dL/dparam}`` of the kernel loss, the layers' gradient taken by ``path`` (None: the
    network's own, as the training step takes it)."""
    net.zero_grad(set_to_none=True)
    with use_gradient_path(net, path if path is not None else net.settings.train_gradient):
        out, _ = net(x, True)
    compute_loss(out, labels, net.settings).backward()
    return {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('model', ['LIF', 'ALIF'])
def test_bptt_training_gradients_match_autograd(model):
    net, x, labels = small_network(model)
    assert net.settings.train_gradient == BpttPath('fast-sigmoid', 5)
    got = parameter_gradients(net, x, labels)
    expected = parameter_gradients(net, x, labels, AutogradPath('fast-sigmoid', 5))
    names = {name for name, _ in net.named_parameters()}
    assert set(got) == set(expected) == names  # every weight, and theta_v for TA-LIF
    assert any(name.endswith('theta_v') for name in names) == (model == 'ALIF')
    for name in names:
        assert expected[name].abs().max() > 0, name
        torch.testing.assert_close(got[name], expected[name], rtol=RTOL, atol=ATOL, msg=name)
    # and it is not the published rule's gradient
    published = parameter_gradients(net, x, labels, 'published')
    assert any(not torch.allclose(got[name], published[name]) for name in names)


@pytest.mark.parametrize('model', ['LIF', 'ALIF'])
def test_train_step_follows_train_gradient(model):
    """engine.train_step applies the key: its (clipped) gradients are the reference's, clipped."""
    net, x, labels = small_network(model)
    expected = parameter_gradients(copy.deepcopy(net), x, labels, AutogradPath('fast-sigmoid', 5))
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in expected.values()]))
    scale = min(1.0, GRAD_CLIP_NORM / (norm.item() + 1e-6))  # clip_grad_norm_'s rule
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # keeps the gradients to look at
    _, _, grad_norm = train_step(net, x, labels, optimizer)
    torch.testing.assert_close(grad_norm, norm, rtol=RTOL, atol=ATOL)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[name] * scale, rtol=RTOL, atol=ATOL, msg=name)
    assert all(layer.gradient_path is None for layer in net.layers if hasattr(layer, 'gradient_path'))


def test_published_is_the_default_and_unchanged():
    net, x, labels = small_network('ALIF', train_gradient='published')
    default, _, _ = small_network('ALIF', train_gradient=None)
    assert net.settings.train_gradient is None and default.settings.train_gradient is None
    got = parameter_gradients(net, x, labels)
    expected = parameter_gradients(default, x, labels, 'published')
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def test_config_records_and_validates_the_key():
    cfg, _ = load_config(f"{ROOT}/networks/FashionMNIST.yaml")
    assert cfg['Network']['train_gradient'] == 'published'
    cfg, _ = load_config(f"{ROOT}/networks/FashionMNIST.yaml",
                         ['Network.train_gradient=bptt:fast-sigmoid'])
    assert cfg['Network']['train_gradient'] == 'bptt:fast-sigmoid:2.5'  # the full name
    for value, match in [('bptt:nope', "unknown surrogate 'nope'"), ('exact', 'unknown gradient'),
                         ('bptt:sigmoid:0', '> 0')]:
        with pytest.raises(ConfigError, match=f"Network.train_gradient: .*{match}"):
            load_config(f"{ROOT}/networks/FashionMNIST.yaml", [f'Network.train_gradient={value}'])


@pytest.mark.parametrize('model', ['LIF', 'ALIF'])
def test_main_trains_through_bptt(mnist_dir, tmp_path, model, capsys):  # noqa: F811
    out = str(tmp_path / 'bptt')
    assert main.main(['-d', '0', '--out', out, *settings(
        mnist_dir, 'DEFAULT.advtest=false', 'DEFAULT.train_samples=32', 'DEFAULT.test_samples=16',
        f'Network.train_gradient={GRADIENT}', model=model)]) == 0
    assert f"training step through the {GRADIENT} gradient" in capsys.readouterr().out
    run = results(out)
    assert run['config']['Network']['train_gradient'] == GRADIENT
    assert len(run['epochs']) == 1 and run['epochs'][0]['train_samples'] == 32


def test_bad_train_gradient_is_one_line_exit_2(mnist_dir, tmp_path, capsys):  # noqa: F811
    code = main.main(['-d', '0', '--out', str(tmp_path / 'bad'), *settings(
        mnist_dir, 'Network.train_gradient=bptt:sigmod')])
    err = capsys.readouterr().err.strip()
    assert code == 2 and 'Network.train_gradient' in err and len(err.splitlines()) == 1
