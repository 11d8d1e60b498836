"""Checkpoints say what they are (issue 19 item 2): with ``-d N``, main.py (DEFAULT.ckpt) and
evaluate.py (--ckpt) take Network.model from the checkpoint -- its saved config, else its state
dict -- and say so; an explicit --set Network.model or --config that contradicts it is still the
one-line error."""
import json
import os

import pytest
import torch

import evaluate
import main
from config import ConfigError, dump_config, load_config
from runtime.checkpoint import load_checkpoint, save_checkpoint
from errors import UserError
from training import experiment
from training.checkpoint_model import STATE_DICT_SIGNATURES, model_of_checkpoint
from conftest import SMALL_LAYERS


def small(mnist_dir, *extra):
    """--set pairs of the small MNIST-architecture network, without Network.model."""
    sets = [f'Network.data_path={mnist_dir}', 'Network.ckpt_v=null', 'Network.batch_size=16',
            'ATTACK.strength=[1/10]', *SMALL_LAYERS, *extra]
    return [arg for s in sets for arg in ('--set', s)]


def write_checkpoint(mnist_dir, path, model, with_config=False):
    """A released-format checkpoint (weights only, like the zoo's) of ``model``; with its config
    when ``with_config`` (as this project's runs save them)."""
    cfg, _ = load_config('networks/MNIST.yaml', small(mnist_dir, f'Network.model={model}')[1::2])
    extra = {'config': cfg} if with_config else {}
    save_checkpoint(str(path), experiment.build_model(cfg), 0, **extra)
    return str(path)


def test_state_dict_and_saved_config_name_the_model(mnist_dir, tmp_path):
    lif = load_checkpoint(write_checkpoint(mnist_dir, tmp_path / 'lif.pth', 'LIF'))
    alif = load_checkpoint(write_checkpoint(mnist_dir, tmp_path / 'alif.pth', 'ALIF'))
    assert model_of_checkpoint(lif, 'lif.pth')[0] == 'LIF'
    model, how = model_of_checkpoint(alif, 'alif.pth')
    assert model == 'ALIF' and 'theta_v' in how and 'state dict' in how
    # An NDS buffer alone (no theta_v) is TA-LIF too.
    only_nds = {'net': {k: v for k, v in alif['net'].items() if not k.endswith('theta_v')}}
    assert model_of_checkpoint(only_nds, 'x')[0] == 'ALIF'
    # The saved config wins over the state dict.
    assert model_of_checkpoint({**lif, 'config': {'Network': {'model': 'ALIF'}}}, 'x') == \
        ('ALIF', 'its saved config')
    with pytest.raises(ConfigError, match=r"'x' was saved from Network.model='SRM'"):
        model_of_checkpoint({**lif, 'config': {'Network': {'model': 'SRM'}}}, 'x')
    assert STATE_DICT_SIGNATURES[-1].matches(set())  # the last entry catches every state dict


def test_main_takes_the_model_from_the_checkpoint(mnist_dir, tmp_path, capsys):
    """networks/MNIST.yaml says ALIF; a LIF checkpoint runs as LIF without --set."""
    ckpt = write_checkpoint(mnist_dir, tmp_path / 'lif.pth', 'LIF')
    out = tmp_path / 'eval'
    assert main.main(['-d', '0', '--out', str(out), *small(
        mnist_dir, 'DEFAULT.cleantrain=false', f'DEFAULT.ckpt={ckpt}',
        'DEFAULT.test_samples=4', 'ATTACK.strength=[]')]) == 0
    stdout = capsys.readouterr().out
    assert f"Network.model=LIF: from checkpoint '{ckpt}' (its state dict" in stdout
    assert 'the config said ALIF' in stdout
    with open(out / 'results.json') as f:
        assert json.load(f)['config']['Network']['model'] == 'LIF'


def test_saved_config_is_read_first_and_logged(mnist_dir, tmp_path, capsys):
    ckpt = write_checkpoint(mnist_dir, tmp_path / 'alif.pth', 'ALIF', with_config=True)
    assert main.main(['-d', '0', '--out', str(tmp_path / 'eval'), *small(
        mnist_dir, 'DEFAULT.cleantrain=false', f'DEFAULT.ckpt={ckpt}',
        'DEFAULT.test_samples=4', 'ATTACK.strength=[]')]) == 0
    assert f"Network.model=ALIF: from checkpoint '{ckpt}' (its saved config)" in \
        capsys.readouterr().out


def one_line_error(code, capsys):
    err = capsys.readouterr().err.strip()
    assert code == UserError.exit_status and err.startswith('error: ') and '\n' not in err, err
    return err


def test_explicit_model_that_contradicts_the_checkpoint_is_an_error(mnist_dir, tmp_path, capsys):
    ckpt = write_checkpoint(mnist_dir, tmp_path / 'lif.pth', 'LIF')
    code = main.main(['-d', '0', '--out', str(tmp_path / 'a'), *small(
        mnist_dir, 'Network.model=ALIF', 'DEFAULT.cleantrain=false', f'DEFAULT.ckpt={ckpt}')])
    assert 'set Network.model=LIF' in one_line_error(code, capsys)
    # --config: the file is the experiment, its model is explicit.
    cfg, _ = load_config('networks/MNIST.yaml', small(mnist_dir)[1::2])
    config = tmp_path / 'alif.yaml'
    config.write_text(dump_config(cfg))
    code = evaluate.main(['--ckpt', ckpt, '--config', str(config), '--suite', 'published',
                          '--out', str(tmp_path / 'b')])
    assert 'set Network.model=LIF' in one_line_error(code, capsys)


def test_evaluate_takes_the_model_from_the_checkpoint(mnist_dir, tmp_path, capsys):
    lif = write_checkpoint(mnist_dir, tmp_path / 'lif.pth', 'LIF')
    alif = write_checkpoint(mnist_dir, tmp_path / 'alif.pth', 'ALIF')
    out = tmp_path / 'eval'
    # The partner's model is inferred too (released format: no saved config).
    assert evaluate.main(['--ckpt', lif, '-d', '0', '--out', str(out), '--suite', 'published',
                          '--eps', '1/10', '--samples', '3', '--no-sanity-eps',
                          '--partner', alif, *small(mnist_dir)]) == 0
    assert f"Network.model=LIF: from checkpoint '{lif}'" in capsys.readouterr().out
    with open(out / 'robustness.json') as f:
        assert json.load(f)['rows']
    assert os.path.isfile(out / 'report.md')
    assert torch.load(lif, weights_only=True)['epoch'] == 0


def test_ann_checkpoint_is_evaluated_from_its_saved_config(mnist_dir, tmp_path, capsys):
    """The ANN twin's checkpoints (issue 18) name their model in the saved config; evaluate.py
    attacks them with no --set (its state dict alone looks like a LIF network's)."""
    ann = write_checkpoint(mnist_dir, tmp_path / 'ann.pth', 'ANN', with_config=True)
    assert model_of_checkpoint(load_checkpoint(ann), 'ann.pth') == ('ANN', 'its saved config')
    out = tmp_path / 'eval'
    assert evaluate.main(['--ckpt', ann, '-d', '0', '--out', str(out), '--suite', 'quick',
                          '--eps', '1/10', '--samples', '3', '--no-sanity-eps',
                          *small(mnist_dir)]) == 0
    assert f"Network.model=ANN: from checkpoint '{ann}' (its saved config)" in \
        capsys.readouterr().out
    with open(out / 'robustness.json') as f:
        rows = json.load(f)['rows']
    # its rows say that their gradient is plain autograd (Square: none; published attacks: theirs)
    own = [row for row in rows if not row['attack'].startswith('published')]
    assert own and {row['gradient'] for row in own} <= {'autograd', 'none'}
