"""Issue 18 (items 2, 3): adversarial training at the evaluation eps -- ATTACK.ft_method pgd_rs and
trades (ft_steps, ft_step_size, trades_beta, ft_eps_ramp_epochs), model selection by robust
accuracy on a validation split held out of the training set (DEFAULT.select, val_samples) -- and
the ANN twin (Network.model: ANN): tiny runs from YAML and --set, the split is disjoint from what
is trained on, bad values are one-line errors."""
import copy
import math

import pytest
import torch
import yaml

import main
from attack import ATTACKS, training_attack
from config import ConfigError, load_config
from conftest import ROOT
from layers import (AnnNetwork, Network, compute_loss, parse_gradient_path, predict, time_expand,
                    use_gradient_path)
from runtime.checkpoint import load_checkpoint
from training.adversarial import (Adversary, build_adversary, holdout_indices, split_training_set,
                                  trades_objective, validation_pgd_accuracy)
from training.experiment import build_loaders, build_model
from conftest import (N_TRAIN, SMALL_LAYERS, assert_random_start_attack, read_results as results,
                      settings)

FASHION = f"{ROOT}/networks/FashionMNIST.yaml"
LIF_NETWORK = {'n_steps': 5, 'tau_m': 5, 'tau_s': 3, 'model': 'LIF', 'tau_v': 10, 'is_bn': False,
               'loss': 'kernel', 'n_class': 3, 'save_target': False}
LAYERS = {'conv_1': {'type': 'conv', 'in_channels': 1, 'out_channels': 3, 'kernel_size': 3,
                     'padding': 1, 'threshold': 1, 'weight_scale': 3},
          'pooling_1': {'type': 'pooling', 'kernel_size': 2},
          'drop': {'type': 'dropout', 'p': 0.2},
          'output': {'type': 'linear', 'n_inputs': 12, 'n_outputs': 3, 'weight_scale': 3,
                     'threshold': 1}}
CTX = type('Ctx', (), {'device': torch.device('cpu'), 'world_size': 1, 'distributed': False,
                       'rank': 0})()


def small(model='LIF', seed=0, **network):
    torch.manual_seed(seed)
    cfg = {**LIF_NETWORK, 'model': model, **network}
    cls = AnnNetwork if model == 'ANN' else Network
    return cls(cfg, LAYERS, (1, 4, 4)).double()


def batch(n=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 4, 4, dtype=torch.float64, generator=generator)
    return time_expand(images, 5), torch.arange(n) % 3


def run(mnist_dir, tmp_path, *extra, model='LIF', name='run', config=None):  # noqa: F811
    source = ['--config', config] if config else ['-d', '0']
    return main.main([*source, '--out', str(tmp_path / name),
                      *settings(mnist_dir, *extra, model=model)])


# --- pgd_rs, trades, the ramp ------------------------------------------------------------------

def test_pgd_random_start_stays_in_the_ball_is_random_and_takes_its_keys():
    model = small()
    model.eval()
    x, labels = batch()
    attack = ATTACKS['pgd-rs']
    assert training_attack('pgd_rs') is attack and attack.params['steps'] == 10
    assert_random_start_attack(attack, model, x, labels)
    cfg, _ = load_config(FASHION, ['DEFAULT.cleantrain=false', 'DEFAULT.advtrain=true',
                                   'ATTACK.ft_method=pgd_rs', 'ATTACK.ft_steps=4',
                                   'ATTACK.ft_step_size=1/255', 'ATTACK.train=[4/255]'])
    adversary = build_adversary(cfg)
    assert adversary.attack.params == {'steps': 4, 'step_fraction': pytest.approx(0.25)}
    assert adversary.eps == pytest.approx(4 / 255 / 0.3530)
    default = build_adversary(load_config(FASHION, ['ATTACK.ft_method=pgd_rs'])[0])
    assert default.attack.params == {'steps': 10, 'step_fraction': pytest.approx(0.25)}


def test_published_pgd_is_unchanged_by_the_random_start_option():
    model = small()
    model.eval()
    x, labels = batch()
    # The published PGD (7 steps of eps/3, no random start) draws no random numbers.
    torch.manual_seed(3)
    a = ATTACKS['pgd'](model, x, labels, 0.1)
    torch.manual_seed(4)
    b = ATTACKS['pgd'](model, x, labels, 0.1)
    assert torch.equal(a, b)


@pytest.mark.parametrize('model_name', ['LIF', 'ANN'])
def test_trades_inner_attack_and_outer_loss(model_name):
    model = small(model_name)
    model.train()
    x, labels = batch()
    torch.manual_seed(0)
    x_adv = ATTACKS['trades'](model, x, labels, 0.1, None)
    assert 0 < (x_adv - x).abs().max() <= 0.1 + 1e-12
    settings = model.settings
    with torch.no_grad():
        out_clean, _ = model(x, False)
        natural = compute_loss(out_clean, labels, settings)
        out, loss0 = trades_objective(settings, x, 0.0)(model, x_adv, labels, False)
        _, loss6 = trades_objective(settings, x, 6.0)(model, x_adv, labels, False)
        _, same = trades_objective(settings, x, 6.0)(model, x, labels, False)
    # beta = 0: the network's own loss (the kernel loss for LIF, cross-entropy for the ANN)
    torch.testing.assert_close(loss0, natural)
    assert loss6 >= loss0 and torch.isclose(same, natural)  # KL >= 0, and 0 at x' = x
    torch.testing.assert_close(out, model(x_adv, False)[0])
    if model_name == 'ANN':
        torch.testing.assert_close(natural, torch.nn.functional.cross_entropy(
            out_clean.flatten(1), labels))


def test_eps_ramp():
    adversary = Adversary(attack=None, eps=0.3, bounds=None, gradient=None, ramp_epochs=3)
    assert [adversary.at_epoch(e).eps for e in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])
    assert Adversary(None, 0.3, None, None).at_epoch(0).eps == 0.3


@pytest.mark.parametrize('method', ['pgd_rs', 'trades'])
def test_tiny_runs_from_set(mnist_dir, tmp_path, method):  # noqa: F811
    assert run(mnist_dir, tmp_path, 'DEFAULT.cleantrain=false', 'DEFAULT.advtrain=true',
               'DEFAULT.advtest=false', 'ATTACK.train=[1/10]', f'ATTACK.ft_method={method}',
               'ATTACK.ft_steps=2', 'ATTACK.ft_eps_ramp_epochs=2',
               'ATTACK.ft_gradient=bptt:fast-sigmoid') == 0
    run_ = results(str(tmp_path / 'run'))
    assert run_['config']['ATTACK']['ft_method'] == method and len(run_['epochs']) == 1
    assert math.isfinite(run_['epochs'][0]['train_loss'])


# --- model selection on a held-out validation split -------------------------------------------

def test_holdout_split_is_disjoint_deterministic_and_seeded():
    train, val = holdout_indices(100, 10, seed=0)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert sorted(train + val) == list(range(100))
    assert holdout_indices(100, 10, seed=0) == (train, val)
    assert holdout_indices(100, 10, seed=1)[1] != val
    with pytest.raises(ConfigError, match='DEFAULT.val_samples'):
        holdout_indices(10, 10, seed=0)


def test_validation_images_are_never_trained_on(mnist_dir):  # noqa: F811
    cfg, _ = load_config(f"{ROOT}/networks/MNIST.yaml", [
        f'Network.data_path={mnist_dir}', 'DEFAULT.select=robust', 'DEFAULT.val_samples=20',
        'Network.batch_size=16'])
    train_loader, _, nds_loader, val_loader = build_loaders(cfg, CTX, 0, validation=True)
    assert len(val_loader.dataset) == 20 and len(train_loader.dataset) == N_TRAIN - 20

    def images(loader):
        return {tuple(image.flatten().tolist()) for x, _ in loader for image in x}
    val = images(val_loader)
    assert len(val) == 20  # (the fixture's images are distinct)
    assert not val & images(train_loader) and not val & images(nds_loader)
    # select: clean (the default) trains on everything and has no validation loader
    clean, _ = load_config(f"{ROOT}/networks/MNIST.yaml", [f'Network.data_path={mnist_dir}'])
    train_loader, _, _, val_loader = build_loaders(clean, CTX, 0, validation=True)
    assert val_loader is None and len(train_loader.dataset) == N_TRAIN
    assert split_training_set(clean, train_loader.dataset)[0] is train_loader.dataset


def test_select_robust_from_yaml(mnist_dir, tmp_path):  # noqa: F811
    with open(f"{ROOT}/networks/MNIST.yaml") as f:
        cfg = yaml.safe_load(f)
    cfg['DEFAULT'].update(cleantrain=False, advtrain=True, advtest=False, select='robust',
                          val_samples=16)
    cfg['ATTACK'].update(train=['1/10'], ft_method='pgd_rs', ft_steps=2, ft_step_size='1/20')
    config = tmp_path / 'robust.yaml'
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))  # (layer order)
    assert run(mnist_dir, tmp_path, 'Network.epochs=2', config=str(config)) == 0
    run_ = results(str(tmp_path / 'run'))
    assert run_['selection']['metric'] == 'val_pgd_acc' and run_['selection']['val_samples'] == 16
    epochs = run_['epochs']
    assert all(e['train_samples'] == N_TRAIN - 16 and e['val_samples'] == 16 for e in epochs)
    best = max(epochs, key=lambda e: (e['val_pgd_acc'], -e['epoch']))
    assert run_['best'] == {'epoch': best['epoch'], 'test_acc': best['test_acc'],
                            'val_pgd_acc': best['val_pgd_acc']}
    assert load_checkpoint(str(tmp_path / 'run' / 'best.pth'))['epoch'] == best['epoch']


@pytest.mark.parametrize('ft_gradient', ['published', 'bptt:fast-sigmoid:10'])
def test_selection_pgd_crafts_through_the_crafting_gradient(ft_gradient):
    """The selection PGD-7 goes through ATTACK.ft_gradient (the published backward would select a
    HoSNN by its gradient masking): the path every forward of the spiking layers saw."""
    model = small('ALIF')
    torch.manual_seed(1)
    images, labels = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels),
                                         batch_size=4)
    cfg = {'Network': {'mean': 0.5, 'std': 0.5, 'loss': 'kernel'},
           'ATTACK': {'train': [0.1], 'ft_gradient': ft_gradient, 'clamp': False}}
    layer = next(m for m in model.modules() if hasattr(m, 'gradient_path'))
    seen = set()
    hook = layer.register_forward_pre_hook(lambda m, _: seen.add(str(m.gradient_path)))
    progress = lambda it, **_: it  # noqa: E731
    _, n = validation_pgd_accuracy(model, loader, cfg, CTX, progress)
    hook.remove()
    assert n == 8 and seen == {str(parse_gradient_path(ft_gradient))}
    assert layer.gradient_path is None  # (restored)


# --- the ANN twin ------------------------------------------------------------------------------

def test_ann_reads_the_image_and_returns_logits():
    ann = small('ANN')
    x, labels = batch()
    out, nds = ann(x, False)
    assert out.shape == (6, 3, 1, 1, 1) and nds == {}
    # the time mean is the image under direct encoding; a per-step perturbation counts by its mean
    delta = torch.randn_like(x) * 0.1
    torch.testing.assert_close(ann(x + delta, False)[0],
                               ann(time_expand(x[..., 0] + delta.mean(-1), 5), False)[0])
    assert torch.equal(predict(out), out.flatten(1).argmax(1))
    assert ann.settings.loss == 'softmax' and not ann.settings.adaptive
    # the same initial weights as its LIF twin (same layout, same RNG draws)
    lif = small('LIF')
    for name, value in lif.state_dict().items():
        if name.endswith('weight') and 'layers.1' not in name:  # (layer 1: LIF pooling buffer)
            assert torch.equal(ann.state_dict()[name], value), name


def test_ann_gradient_path_is_plain_autograd():
    ann = small('ANN')
    ann.eval()
    x, labels = batch()
    published = ATTACKS['fgsm'](ann, x, labels, 0.1)
    with use_gradient_path(ann, 'bptt:arctan'):
        bptt = ATTACKS['fgsm'](ann, x, labels, 0.1)
    assert torch.equal(published, bptt)
    # every step gets the same gradient sign: per-step and static threat models coincide
    assert torch.equal(published, published[..., :1].expand_as(published))


def test_ann_trains_tests_and_advtests_then_reloads(mnist_dir, tmp_path):  # noqa: F811
    assert run(mnist_dir, tmp_path, 'Network.epochs=2', model='ANN') == 0
    run_ = results(str(tmp_path / 'run'))
    assert len(run_['epochs']) == 2 and all(math.isfinite(e['train_loss']) for e in run_['epochs'])
    rows = run_['robustness']
    assert {row['attack'] for row in rows} >= {'clean', 'fgsm', 'pgd'}
    assert all(row['output_rate'] is None for row in rows)
    cfg, _ = load_config(f"{ROOT}/networks/MNIST.yaml",
                         ['Network.model=ANN', 'Network.ckpt_v=null', *SMALL_LAYERS])
    model = build_model(cfg, str(tmp_path / 'run' / 'best.pth'))
    assert isinstance(model, AnnNetwork)
    # advtrain from it, TRADES
    assert run(mnist_dir, tmp_path, 'DEFAULT.cleantrain=false', 'DEFAULT.advtrain=true',
               'ATTACK.train=[1/10]', 'ATTACK.ft_method=trades', 'ATTACK.ft_steps=2',
               'DEFAULT.advtest=false', f"DEFAULT.ckpt={tmp_path / 'run' / 'best.pth'}",
               model='ANN', name='trades') == 0


def test_ann_checkpoint_in_a_spiking_config_is_refused(mnist_dir, tmp_path, capsys):  # noqa: F811
    assert run(mnist_dir, tmp_path, 'DEFAULT.advtest=false', model='ANN') == 0
    capsys.readouterr()  # (the training run's progress bars)
    code = run(mnist_dir, tmp_path, 'DEFAULT.cleantrain=false',
               f"DEFAULT.ckpt={tmp_path / 'run' / 'best.pth'}", model='LIF', name='eval')
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'set Network.model=ANN' in err[0]


# --- bad values: one line, exit 2, naming the key ---------------------------------------------

@pytest.mark.parametrize('extra, key', [
    (['ATTACK.ft_method=madry'], 'ATTACK.ft_method'),
    (['ATTACK.ft_steps=0'], 'ATTACK.ft_steps'),
    (['ATTACK.ft_steps=2.5'], 'ATTACK.ft_steps'),
    (['ATTACK.ft_step_size=-1/255'], 'ATTACK.ft_step_size'),
    (['ATTACK.ft_step_size=0'], 'ATTACK.ft_step_size'),
    (['ATTACK.trades_beta=-1'], 'ATTACK.trades_beta'),
    (['ATTACK.trades_beta=lots'], 'ATTACK.trades_beta'),
    (['ATTACK.ft_eps_ramp_epochs=-2'], 'ATTACK.ft_eps_ramp_epochs'),
    (['DEFAULT.select=best'], 'DEFAULT.select'),
    (['DEFAULT.select=robust', 'DEFAULT.val_samples=0'], 'DEFAULT.val_samples'),
    (['DEFAULT.select=robust', 'DEFAULT.train_samples=50', 'DEFAULT.val_samples=50'],
     'DEFAULT.val_samples'),
    (['DEFAULT.select=robust', 'DEFAULT.val_samples=500'], 'DEFAULT.val_samples'),  # > 96 images
    (['DEFAULT.select=robust', 'ATTACK.train=[]', 'DEFAULT.advtrain=false',
      'DEFAULT.cleantrain=true'], 'DEFAULT.select'),
    (['Network.model=CNN'], 'Network.model'),
    (['Network.model=ANN', 'Network.save_target=true'], 'Network.save_target'),
    (['Network.model=ANN', 'ATTACK.ft_gradient=bptt:arctan'], 'ATTACK.ft_gradient'),
])
def test_bad_values_are_one_line_errors(mnist_dir, tmp_path, capsys, extra, key):  # noqa: F811
    code = run(mnist_dir, tmp_path, 'DEFAULT.cleantrain=false', 'DEFAULT.advtrain=true',
               'ATTACK.train=[1/10]', *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and key in err[0], err


def test_defaults_are_the_published_behaviour():
    cfg, warnings = load_config(FASHION)
    assert cfg['DEFAULT']['select'] == 'clean' and cfg['ATTACK']['ft_method'] == 'fgm'
    assert cfg['ATTACK']['clamp'] is False and cfg['Network']['T_max'] == 200
    assert not any('unknown key' in w for w in warnings)
    ann, _ = load_config(FASHION, ['Network.model=ANN'])
    # the ANN keeps its twin's threat model and schedule (by the YAML's loss)
    assert ann['ATTACK']['clamp'] is False and ann['Network']['T_max'] == 200
    assert copy.deepcopy(ann['Network'])['loss'] == 'kernel'
