"""Adversarial training through the adaptive gradient (ATTACK.ft_gradient, ATTACK.ft_method
fgm_rs): the default crafts exactly what the published code crafts; a BPTT path crafts with the
gradient through membrane, reset and threshold; bad values are one-line config errors."""
import copy

import pytest
import torch

import main
from attack import ATTACKS, training_attack
from config import load_config
from conftest import ROOT, assert_random_start_attack, read_results, settings, small_alif
from layers import parse_gradient_path, time_expand, use_gradient_path
from training.engine import train_one_epoch


def test_default_training_gradient_is_published():
    cfg, _ = load_config(f"{ROOT}/networks/FashionMNIST.yaml")
    assert cfg['ATTACK']['ft_gradient'] == 'published'
    assert parse_gradient_path(cfg['ATTACK']['ft_gradient']) is None


def test_ft_gradient_choice_reaches_the_crafted_examples():
    """One epoch of adversarial training crafts with the named gradient: the published default
    gives the published FGSM examples, a BPTT path other ones (the same as FGSM under that path)."""
    model = small_alif()
    x = time_expand(torch.rand(6, 1, 4, 4, dtype=torch.float64), 5)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    fgsm = training_attack('fgm')
    crafted, by_path = {}, {}

    class Recorder(torch.nn.Module):  # stands in for the DDP-wrapped model: records its inputs
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, is_train):
            crafted.setdefault('x', x.detach().clone())
            return self.inner(x, is_train)

    ctx = type('Ctx', (), {'device': torch.device('cpu'), 'world_size': 1, 'distributed': False,
                           'rank': 0})()
    loader = [(x[..., 0], labels)]
    for name in ('published', 'bptt:sigmoid:5'):
        crafted.clear()
        copy_ = copy.deepcopy(model)
        optimizer = torch.optim.SGD(copy_.parameters(), lr=0.0)
        path = parse_gradient_path(name)
        train_one_epoch(Recorder(copy_), copy_, loader, optimizer, ctx,
                        lambda it, **_: it, 0, adversary=(fgsm, 0.1, None, path))
        copy_.train()
        with use_gradient_path(copy_, path):
            expected = fgsm(copy_, x, labels, 0.1, None)
        assert torch.equal(crafted['x'], expected), name
        by_path[name] = crafted['x']
    assert not torch.equal(by_path['published'], by_path['bptt:sigmoid:5'])
    # No layer keeps the BPTT path after training.
    assert all(getattr(layer, 'gradient_path', None) is None for layer in model.layers)


def test_fgsm_random_start_stays_in_the_ball_and_is_random():
    model = small_alif()
    model.eval()
    x = time_expand(torch.rand(4, 1, 4, 4, dtype=torch.float64), 5)
    labels = torch.tensor([0, 1, 2, 0])
    attack = ATTACKS['fgsm-rs']
    assert attack.ft_method == 'fgm_rs' and 'train' in attack.usage
    assert_random_start_attack(attack, model, x, labels)


def test_adaptive_adversarial_training_end_to_end(mnist_dir, tmp_path):  # noqa: F811
    out = str(tmp_path / 'adv')
    assert main.main(['-d', '0', '--out', out, *settings(
        mnist_dir, 'DEFAULT.cleantrain=false', 'DEFAULT.advtrain=true', 'DEFAULT.advtest=false',
        'ATTACK.train=[1/10]', 'ATTACK.ft_method=fgm_rs', 'ATTACK.ft_gradient=bptt:arctan',
        model='LIF')]) == 0
    run = read_results(out)
    assert run['config']['ATTACK']['ft_gradient'] == 'bptt:arctan'
    assert len(run['epochs']) == 1


@pytest.mark.parametrize('value', ['bptt:nope', 'adaptive', '[1]', 'bptt:sigmoid:-1'])
def test_bad_ft_gradient_is_one_line_exit_2(mnist_dir, tmp_path, capsys, value):  # noqa: F811
    code = main.main(['-d', '0', '--out', str(tmp_path / 'bad'), *settings(
        mnist_dir, 'DEFAULT.cleantrain=false', 'DEFAULT.advtrain=true', 'ATTACK.train=[1/10]',
        f'ATTACK.ft_gradient={value}')])
    err = capsys.readouterr().err.strip()
    assert code == 2 and 'ATTACK.ft_gradient' in err and len(err.splitlines()) == 1
