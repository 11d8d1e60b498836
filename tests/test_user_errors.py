"""What a user gets wrong ends in one line and exit status 2, never a traceback; --resume with a
changed config is refused unless allowed, and an allowed change is recorded; the NDS a run uses
and writes is the one it says; runs do not overwrite each other and failed runs leave nothing
behind; output files get the usual modes under umask 022."""
import glob
import os
import stat

import pytest
import torch

import main
from errors import UserError
from training.experiment import build_model
from runtime.checkpoint import load_checkpoint, save_checkpoint
from config import load_config
from conftest import read_results, settings


def run(args, capsys):
    code = main.main(['-d', '0', *args])
    captured = capsys.readouterr()
    return code, captured.err.strip(), captured.out


def one_line_error(code, err):
    assert code == UserError.exit_status, err
    assert err.startswith('error: ') and '\n' not in err, err
    return err


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_device_cuda_without_cuda(mnist_dir, tmp_path, capsys):
    err = one_line_error(*run(['--out', str(tmp_path / 'o'), '--device', 'cuda',
                               *settings(mnist_dir)], capsys)[:2])
    assert '--device cuda' in err and 'CUDA is not available' in err
    assert not (tmp_path / 'o').exists()


def test_slurm_without_master_addr(mnist_dir, tmp_path, capsys, monkeypatch):
    for name in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('SLURM_PROCID', '0')
    monkeypatch.setenv('SLURM_NTASKS', '2')
    err = one_line_error(*run(['--out', str(tmp_path / 'o'), '--device', 'cpu',
                               *settings(mnist_dir)], capsys)[:2])
    assert 'MASTER_ADDR' in err


def test_negative_workers(mnist_dir, tmp_path, capsys):
    err = one_line_error(*run(['--out', str(tmp_path / 'o'), '--workers', '-1',
                               *settings(mnist_dir)], capsys)[:2])
    assert '--workers' in err and '-1' in err


@pytest.mark.parametrize('saved, configured', [('LIF', 'ALIF'), ('ALIF', 'LIF')])
def test_checkpoint_of_the_other_neuron_model(mnist_dir, tmp_path, capsys, saved, configured):
    cfg, _ = load_config('networks/MNIST.yaml', settings(mnist_dir, model=saved)[1::2])
    ckpt = str(tmp_path / f'{saved}.pth')
    save_checkpoint(ckpt, build_model(cfg), 0)
    out = tmp_path / 'o'
    err = one_line_error(*run(['--out', str(out), *settings(
        mnist_dir, 'DEFAULT.cleantrain=false', f'DEFAULT.ckpt={ckpt}', model=configured)],
        capsys)[:2])
    assert f'set Network.model={saved}' in err and ckpt in err
    assert not out.exists()  # a failed run leaves no empty folder


def test_failed_download_leaves_no_empty_folders(tmp_path, capsys, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError('network unreachable (test)')
    monkeypatch.setattr(urllib.request, 'urlopen', offline)
    data = tmp_path / 'datasets' / 'mnist'
    out = tmp_path / 'o'
    code, _, _ = run(['--out', str(out), '--set', f'Network.data_path={data}'], capsys)
    assert code == UserError.exit_status
    assert not (tmp_path / 'datasets').exists() and not out.exists()


def test_resume_with_a_changed_config(mnist_dir, tmp_path, capsys):
    """--resume --set Network.lr=... refuses naming the key and touches nothing; with
    --allow-config-change the new lr is applied (the cosine schedule continues with it) and
    the change is recorded. The lr is written 1e-3 (a YAML float)."""
    out = str(tmp_path / 'run')
    common = ['--out', out, *settings(mnist_dir, 'DEFAULT.advtest=false', 'Network.lr=1e-3')]
    assert run(common, capsys)[0] == 0
    config_before = open(os.path.join(out, 'config.yaml')).read()

    changed = common + ['--resume', '--set', 'Network.lr=0.1', '--set', 'Network.epochs=2']
    err = one_line_error(*run(changed, capsys)[:2])
    assert 'Network.lr: 0.001 -> 0.1' in err and '--allow-config-change' in err
    assert 'Network.epochs' not in err  # training longer is what --resume is for
    assert open(os.path.join(out, 'config.yaml')).read() == config_before
    assert load_checkpoint(os.path.join(out, 'last.pth'))['epoch'] == 0

    code, _, printed = run(changed + ['--allow-config-change'], capsys)
    assert code == 0
    assert 'resuming with a changed config' in printed and 'Network.lr=0.1' in printed
    results = read_results(out)
    assert results['config']['Network']['lr'] == 0.1
    (change,) = results['config_changes']
    assert change['resumed_after_epoch'] == 0
    assert change['changes']['Network.lr'] == {'from': 0.001, 'to': 0.1}
    # Kernel loss: T_max 200; the lr logged after epoch 1's scheduler step is 0.1's cosine value.
    import math
    assert results['epochs'][1]['lr'] == pytest.approx(0.1 * (1 + math.cos(math.pi * 2 / 200)) / 2)
    assert len(glob.glob(os.path.join(out, 'tb', '*'))) == 2  # one TensorBoard folder per launch


def test_nds_goes_under_out_and_the_checkpoint_nds_wins(mnist_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lif = str(tmp_path / 'lif')
    assert run(['--out', lif, *settings(mnist_dir, 'DEFAULT.advtest=false',
                                        'Network.save_target=true')], capsys)[0] == 0
    nds_path = os.path.join(lif, 'nds.pt')
    assert os.path.isfile(nds_path) and not (tmp_path / 'spikedata').exists()
    assert read_results(lif)['nds_file'] == nds_path

    alif = str(tmp_path / 'alif')
    assert run(['--out', alif, *settings(mnist_dir, 'DEFAULT.advtest=false',
                                         f'Network.ckpt_v={nds_path}', model='ALIF')], capsys)[0] == 0
    best = os.path.join(alif, 'best.pth')
    # A checkpoint, no ckpt_v: its NDS is used -- no claim of a random NDS.
    code, _, printed = run(['--out', str(tmp_path / 'e1'), *settings(
        mnist_dir, 'DEFAULT.cleantrain=false', f'DEFAULT.ckpt={best}', model='ALIF')], capsys)
    assert code == 0
    assert 'random NDS' not in printed and f"use the NDS stored in '{best}'" in printed
    # A checkpoint and another NDS file: the checkpoint's wins, with a warning.
    other = str(tmp_path / 'other.pt')
    torch.save({k: v + 1 for k, v in torch.load(nds_path, weights_only=True).items()}, other)
    code, _, printed = run(['--out', str(tmp_path / 'e2'), *settings(
        mnist_dir, 'DEFAULT.cleantrain=false', f'DEFAULT.ckpt={best}', f'Network.ckpt_v={other}',
        model='ALIF')], capsys)
    assert code == 0
    assert "warning: Network.ckpt_v" in printed and "the checkpoint's NDS is used" in printed
    # The same NDS file: no warning.
    code, _, printed = run(['--out', str(tmp_path / 'e3'), *settings(
        mnist_dir, 'DEFAULT.cleantrain=false', f'DEFAULT.ckpt={best}', f'Network.ckpt_v={nds_path}',
        model='ALIF')], capsys)
    assert code == 0 and 'differs' not in printed


def test_default_out_of_an_evaluation_names_the_checkpoint(mnist_dir):
    cfg, _ = load_config('networks/MNIST.yaml', settings(mnist_dir)[1::2])
    assert main.default_out(cfg) == os.path.join('checkpoints', 'MNIST-LIF-cleantrain')
    evaluations = set()
    for ckpt in ('checkpoints/MNIST-LIF-cleantrain/best.pth', 'runs/x/lif_ft/best.pth',
                 'runs/x/lif_ft/last.pth'):
        cfg['DEFAULT'].update(cleantrain=False, ckpt=ckpt)
        evaluations.add(main.default_out(cfg))
    assert len(evaluations) == 3
    assert os.path.join('checkpoints', 'MNIST-LIF-eval-lif_ft-best') in evaluations


def test_outputs_are_0644_under_umask_022(mnist_dir, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        out = str(tmp_path / 'run')
        assert run(['--out', out, *settings(mnist_dir, 'DEFAULT.advtest=false',
                                            'Network.save_target=true')], capsys)[0] == 0
    finally:
        os.umask(old)
    for name in ('config.yaml', 'results.json', 'last.pth', 'best.pth', 'nds.pt'):
        assert stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) == 0o644, name


def test_resume_a_run_saved_before_a_key_existed(mnist_dir, tmp_path, capsys):
    """A last.pth written by an older version lacks keys added since (ATTACK.ft_gradient): its
    default is not a config change, so --resume needs no --allow-config-change; setting the new
    key to something else still is one."""
    import torch
    out = str(tmp_path / 'run')
    common = ['--out', out, *settings(mnist_dir, 'DEFAULT.advtest=false')]
    assert run(common, capsys)[0] == 0
    last = os.path.join(out, 'last.pth')
    state = torch.load(last, weights_only=True)
    del state['config']['ATTACK']['ft_gradient']
    torch.save(state, last)

    longer = common + ['--resume', '--set', 'Network.epochs=2']
    assert run(longer, capsys)[0] == 0
    (change,) = read_results(out)['config_changes']
    assert set(change['changes']) == {'Network.epochs'}

    other = longer + ['--set', 'Network.epochs=3', '--set', 'ATTACK.ft_gradient=bptt:sigmoid']
    err = one_line_error(*run(other, capsys)[:2])
    assert "ATTACK.ft_gradient: 'published' -> 'bptt:sigmoid'" in err


def test_results_record_each_launch(mnist_dir, tmp_path, capsys):
    """results.json says which code ran: one entry per launch (a resumed run may continue on
    another commit), with the commit, the library versions and the number of processes."""
    out = str(tmp_path / 'run')
    common = ['--out', out, *settings(mnist_dir, 'DEFAULT.advtest=false')]
    assert run(common, capsys)[0] == 0
    assert run(common + ['--resume', '--set', 'Network.epochs=2'], capsys)[0] == 0
    launches = read_results(out)['launches']
    assert len(launches) == 2
    for launch in launches:
        assert launch['world_size'] == 1 and launch['versions']['torch'] == torch.__version__
        assert launch['commit'] is None or len(launch['commit'].split('+')[0]) == 40
