"""robustness/adequacy.py: the binarization test (Zimmermann et al. 2022) on a tiny float64
spiking network -- a working attack passes, a useless one fails, and every planted point is a
real adversarial example of the binarized model inside the threat model's ε-ball."""
import json
from fractions import Fraction

import pytest
import torch

from layers import time_expand
from conftest import TWO_CHANNEL_MEAN, TWO_CHANNEL_STD, two_channel_network
from layers.gradients import use_gradient_path
from robustness import attacks
from robustness.threats import ThreatModel, class_scores
from robustness.adequacy import (ADEQUACY_MIN_SHARE, BinarizedModel, binarization_test, binarize,
                                 layer_features)

N_STEPS, N_CLASS, N_IMAGES = 5, 4, 24
MEAN, STD = TWO_CHANNEL_MEAN, TWO_CHANNEL_STD  # two channels with different statistics
EPS = Fraction(16, 255)


def tiny_network(seed=0):
    return two_channel_network('LIF', seed, 2, N_STEPS, N_CLASS)[0]


def threat_model(threat='per-step', clamp=False):
    return ThreatModel(threat, clamp, MEAN, STD, N_STEPS)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tensors this small gain nothing from threads, and on a shared machine several threads per
    process oversubscribe the cores (measured: 8 s with one thread, 70 s with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def data():
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(N_IMAGES, 2, 8, 8, generator=gen, dtype=torch.float64)
    mean = torch.tensor(MEAN, dtype=pixels.dtype).view(1, -1, 1, 1)
    std = torch.tensor(STD, dtype=pixels.dtype).view(1, -1, 1, 1)
    x = time_expand((pixels - mean) / std, N_STEPS)
    labels = torch.zeros(N_IMAGES, dtype=torch.long)
    return tiny_network(), x, labels


def pgd_attack(model, x, labels, threat, eps):
    return attacks.pgd(lambda z: class_scores(model, z), x, labels, threat, eps, 'ce', steps=20,
                       restarts=2)


def apgd_attack(model, x, labels, threat, eps):
    return attacks.torchattacks_attack(attacks._apgd('ce')(20), lambda z: class_scores(model, z),
                                       x, labels, threat, eps)


@pytest.mark.parametrize('threat_name,clamp,attack', [('per-step', False, pgd_attack),
                                                      ('static', True, apgd_attack)])
def test_a_working_attack_passes(data, threat_name, clamp, attack):
    model, x, labels = data
    result = binarization_test(model, x, labels, threat_model(threat_name, clamp), EPS, attack,
                               attack_name=attack.__name__)
    assert result['n_samples'] == N_IMAGES
    assert result['n_applicable'] >= N_IMAGES // 3, result  # the construction mostly works
    assert result['n_applicable'] + result['n_not_applicable'] == N_IMAGES
    assert result['passed'] is True, result
    assert result['value'] == result['n_broken'] / result['n_applicable'] >= ADEQUACY_MIN_SHARE
    assert 'inadequate' not in result['detail']
    # the check dict of adaptive.sanity_checks, plus numbers: JSON-ready as it is
    assert {'check', 'passed', 'detail', 'value', 'threshold'} <= set(result)
    assert result['eps'] == '16/255' and result['threat'] == threat_name and result['clamp'] is clamp
    json.dumps(result)


def test_a_useless_attack_fails(data):
    model, x, labels = data
    result = binarization_test(model, x, labels, threat_model(), EPS,
                               lambda m, xs, ys, t, e: xs, attack_name='identity')
    assert result['n_applicable'] > 0
    assert result['n_broken'] == 0 and result['value'] == 0.0
    assert result['passed'] is False
    assert result['detail'].endswith('attack inadequate')
    assert 'identity' in result['check']


def test_without_separable_features_nothing_is_applicable(data):
    model, x, labels = data
    constant = lambda m, xs: torch.zeros(len(xs), 3, dtype=xs.dtype)  # noqa: E731
    result = binarization_test(model, x[:4], labels[:4], threat_model(), EPS, pgd_attack,
                               features=constant)
    assert result['n_applicable'] == 0 and result['n_not_applicable'] == 4
    assert result['passed'] is None and result['value'] is None
    assert result['detail'].startswith('not applicable')


@pytest.mark.parametrize('threat_name,clamp', [('per-step', False), ('per-step', True),
                                               ('static', False), ('static', True)])
def test_planted_points_are_adversarial_inside_the_ball(data, threat_name, clamp):
    model, x, _ = data
    threat = threat_model(threat_name, clamp)
    built = binarize(model, x, threat, EPS, n_inner=8, n_boundary=8)
    ok = built.applicable
    assert ok.any()
    delta = built.planted - x
    bound = threat.eps_model(EPS, x)
    if threat.static:  # one perturbation repeated over T
        assert torch.equal(delta, delta[..., :1].expand_as(delta))
        delta = delta[..., 0]
    assert bool((delta.abs() <= bound * (1 + 1e-12)).all())
    torch.testing.assert_close(threat.project(x, delta, EPS), delta)  # projection is a no-op
    if clamp:
        pixels = threat.to_image(built.planted)
        assert pixels.min() >= -1e-12 and pixels.max() <= 1 + 1e-12
    with torch.no_grad():
        planted = class_scores(built.model, built.planted).argmax(1)
        clean = class_scores(built.model, x).argmax(1)
        inner = torch.stack([class_scores(built.model, p).argmax(1) for p in built.inner])
    assert bool((planted[ok] == 1).all())  # "adversarial"
    assert bool((clean[ok] == 0).all())    # "clean"
    assert bool((inner[:, ok] == 0).all())


def test_readout_follows_the_image_not_the_batch_position(data):
    """Attacks call the model on subsets of their batch: each input keeps its own read-out."""
    model, x, _ = data
    built = binarize(model, x, threat_model(), EPS, n_inner=4, n_boundary=4)
    with torch.no_grad():
        whole = built.model.margin(built.planted)
        subset = built.model.margin(built.planted[[5, 2, 9]])
    torch.testing.assert_close(subset, whole[[5, 2, 9]])


def test_gradient_paths_reach_the_wrapped_network(data):
    model, x, _ = data
    built = binarize(model, x[:4], threat_model(), EPS, n_inner=4, n_boundary=4)
    assert isinstance(built.model, BinarizedModel) and built.model.settings.n_class == 2
    assert built.model.settings.n_steps == N_STEPS
    spiking = [m for m in model.modules() if hasattr(m, 'gradient_path')]
    assert spiking
    with use_gradient_path(built.model, 'bptt:sigmoid:5'):
        assert all(m.gradient_path is not None for m in spiking)
        inputs = built.planted.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(built.model.margin(inputs).sum(), inputs)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_penultimate_layer_features(data):
    model, x, _ = data
    features = layer_features(model.layers[-2])  # FC_1, time-major [T, B, 16]
    with torch.no_grad():
        values = features(model, x[:3])
    assert values.shape == (3, N_STEPS * 16)
    built = binarize(model, x, threat_model(), EPS, features=features, n_inner=8, n_boundary=8)
    assert built.applicable.sum() >= built.applicable.numel() // 2


def test_duplicate_images_and_float32(data):
    """Images closer than 2 ε share no attack batch (one read-out per ε-ball); float32 works."""
    model, x, labels = data
    model32 = tiny_network().float()
    x32 = torch.cat([x[:6], x[:6]]).float()  # every image twice
    result = binarization_test(model32, x32, labels[:12], threat_model(), EPS, pgd_attack)
    assert result['n_applicable'] > 0  # (the copies draw their own random points)
    assert result['passed'] is True, result
    from robustness.adequacy import _separated_groups
    groups = _separated_groups(x32, threat_model().eps_model(EPS, x32))
    assert all(len({i % 6 for i in group}) == len(group) for group in groups)
    assert sorted(i for group in groups for i in group) == list(range(12))
