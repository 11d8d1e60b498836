"""The published code's float64 tensors (tests/golden, see its README) are reproduced exactly."""
import os

import pytest
import torch

from attack import ATTACKS, Normalization
from conftest import ROOT, load_golden
from training.engine import build_optimizer, train_step
from layers import Network, compute_loss

RTOL, ATOL = 1e-6, 1e-9
ATTACK_MATCH = 0.995  # a sign of a gradient that is zero up to rounding may flip

KERNEL_CASES = ['mnist_alif', 'mnists_lif', 'mnists_alif', 'cifar10s_lif', 'cifar10s_alif']
SOFTMAX_CASES = ['cifar100s_lif', 'cifar100s_alif']
CASES = [('hosnn_kernel.pt', c) for c in KERNEL_CASES] + [('hosnn_softmax.pt', c) for c in SOFTMAX_CASES]
# The same float64 numbers on every device the machine has (the code is device-generic).
DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
_CACHE = {}


def golden_case(file_name, case_name, device):
    if file_name not in _CACHE:
        _CACHE[file_name] = load_golden(file_name)
    return to_device(_CACHE[file_name][case_name], device)


def to_device(value, device):
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def build(case):
    network_cfg = dict(case['network'], ckpt_v=None)  # the state dict carries the NDS
    net = Network(network_cfg, case['layers'], list(case['input'].shape[1:4])).double()
    net.load_state_dict(case['state_dict'], strict=True)
    return net.to(case['input'].device), network_cfg


def forward_backward(net, case, network_cfg, mode):
    net.train(mode == 'train')
    net.zero_grad(set_to_none=True)
    x = case['input'].clone().requires_grad_(True)
    out, nds = net(x, False)
    loss = compute_loss(out, case['labels'], net.settings)
    loss.backward()
    return out, loss, x.grad


def assert_close(actual, expected, what):
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize('file_name,case_name', CASES)
@pytest.mark.parametrize('device', DEVICES)
def test_forward_loss_and_gradients(file_name, case_name, device):
    case = golden_case(file_name, case_name, device)
    net, network_cfg = build(case)
    params = dict(net.named_parameters())
    assert case['forward'], 'golden case without forward records'
    for mode, expected in case['forward'].items():  # train first, then eval: BN statistics order
        out, loss, input_grad = forward_backward(net, case, network_cfg, mode)
        assert_close(out, expected['output'], f"{case_name}/{mode} output")
        assert_close(loss, expected['loss'], f"{case_name}/{mode} loss")
        assert_close(input_grad, expected['input_grad'], f"{case_name}/{mode} input grad")
        checked = 0
        for key, grad in expected['grads'].items():
            name = key[len('module.'):]
            if grad.numel() == 0:  # no gradient in the published code (pooling weights)
                assert name not in params or params[name].grad is None
                continue
            assert_close(params[name].grad, grad, f"{case_name}/{mode} grad of {name}")
            checked += 1
        assert checked == sum(p.requires_grad for p in params.values())


@pytest.mark.parametrize('file_name,case_name', CASES)
@pytest.mark.parametrize('device', DEVICES)
def test_attacks(file_name, case_name, device):
    case = golden_case(file_name, case_name, device)
    net, network_cfg = build(case)
    for mode in case['forward']:  # reproduce the BN running statistics of the recording
        forward_backward(net, case, network_cfg, mode)
    net.eval()
    units = Normalization.of(network_cfg)
    bounds = units.bounds() if case['attack_clamp'] else None
    for eps, expected in case['attacks'].items():
        eps_scaled = units.to_model_units(float(eps))
        for name, attack in (('fgm', 'fgsm'), ('pgd', 'pgd'), ('bim', 'bim')):
            x_adv = ATTACKS[attack](net, case['input'], case['labels'], eps_scaled, bounds)
            match = torch.isclose(x_adv, expected[name], rtol=RTOL, atol=ATOL).double().mean()
            assert match >= ATTACK_MATCH, f"{case_name} {name} eps={eps}: {match:.4f} of elements match"


@pytest.mark.parametrize('file_name,case_name', [c for c in CASES if c[1] != 'mnist_alif'])
@pytest.mark.parametrize('device', DEVICES)
def test_one_training_step(file_name, case_name, device):
    case = golden_case(file_name, case_name, device)
    net, network_cfg = build(case)
    for mode in case['forward']:
        forward_backward(net, case, network_cfg, mode)
    # (the recorded attacks ran in eval mode: they do not change the BN statistics)
    net.train()
    # The training loop's own step (engine.train_step); the recording ran it without dropout.
    train_step(net, case['input'], case['labels'], build_optimizer(net, network_cfg['lr']),
               dropout=False)
    state = net.state_dict()
    assert set('module.' + k for k in state) == set(case['after_step'])
    for key, expected in case['after_step'].items():
        assert_close(state[key[len('module.'):]].to(expected.dtype), expected, f"{case_name} {key}")


def test_released_nds_loads_into_mnist_alif(golden_kernel):
    """The shipped spikedata/mnist/mnist.pt is the NDS inside the golden mnist_alif state dict."""
    case = golden_kernel['mnist_alif']
    assert case['network']['ckpt_v'] == './spikedata/mnist/mnist.pt'
    network_cfg = dict(case['network'], ckpt_v=os.path.join(ROOT, 'spikedata', 'mnist', 'mnist.pt'))
    net = Network(network_cfg, case['layers'], [1, 28, 28])
    loaded = 0
    for index, layer in enumerate(net.layers):
        key = f"module.layers.{index}.target_train"
        if key in case['state_dict']:
            torch.testing.assert_close(layer.target_train.double(), case['state_dict'][key])
            loaded += 1
    assert loaded == 3
