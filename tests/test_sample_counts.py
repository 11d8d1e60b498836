"""Sample counts take integers only (issue 19 item 6a): DEFAULT.train_samples / test_samples,
Network.batch_size and evaluate.py --samples refuse a float, a bool or a huge number in one line
(exit status 2) -- 1e12 used to end in "slice indices must be integers" in datasets/."""
import os

import pytest

import evaluate
import main
from config import ConfigError, MAX_SAMPLES, load_config
from conftest import ROOT
from errors import UserError

MNIST = os.path.join(ROOT, 'networks', 'MNIST.yaml')
BAD = ['1000000000000.0', '1000.0', '1e3', 'true', 'false', '1000000000000', '0', '-5', '"100"',
       '[100]']


@pytest.mark.parametrize('key', ['DEFAULT.train_samples', 'DEFAULT.test_samples',
                                 'Network.batch_size'])
@pytest.mark.parametrize('value', BAD)
def test_sample_count_keys_take_integers_only(key, value):
    with pytest.raises(ConfigError) as info:
        load_config(MNIST, [f'{key}={value}'])
    message = str(info.value)
    assert message.startswith(f'{MNIST}: {key} must be an integer number of samples')
    assert '\n' not in message


def test_sample_counts_that_are_integers_load():
    cfg, _ = load_config(MNIST, ['DEFAULT.train_samples=1000', 'DEFAULT.test_samples=null',
                                 'Network.batch_size=32', 'DEFAULT.seed=1'])
    assert cfg['DEFAULT']['train_samples'] == 1000 and cfg['DEFAULT']['test_samples'] is None
    assert type(cfg['Network']['batch_size']) is int and 1000 < MAX_SAMPLES


def test_a_float_sample_count_ends_main_in_one_line(tmp_path, capsys):
    out = tmp_path / 'o'
    code = main.main(['-d', '3', '--out', str(out), '--set',
                      'DEFAULT.train_samples=1000000000000.0'])
    err = capsys.readouterr().err.strip()
    assert code == UserError.exit_status and '\n' not in err and 'Traceback' not in err
    assert 'DEFAULT.train_samples' in err and '1000000000000.0' in err
    assert not out.exists()


@pytest.mark.parametrize('value', ['1.5', '1e3', 'true', '0', '-2', '10000000000000', 'x'])
def test_evaluate_samples_flag_takes_integers_only(tmp_path, capsys, value):
    code = evaluate.main(['--ckpt', os.path.join(ROOT, 'checkpoints', 'fashionmnist', 'lif_clean.pth'), '-d', '3',
                          f'--samples={value}', '--out', str(tmp_path / 'o')])
    err = capsys.readouterr().err.strip()
    assert code == UserError.exit_status and err.startswith('error: --samples must be an integer')
    assert '\n' not in err
