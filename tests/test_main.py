"""End-to-end runs of main.py on fixture data (real on-disk formats, real loaders): clean training
-> checkpoint -> adversarial test, 2-process torchrun vs one process, resume, released
checkpoints, and bad inputs that must exit non-zero naming the culprit."""
import os
import signal
import subprocess
import sys

import pytest
import torch

import main
from errors import UserError
from runtime.checkpoint import load_checkpoint
from conftest import N_TEST, N_TRAIN, ROOT, load_golden, read_results, settings


def run_main(args):
    return main.main(['-d', '0', *args])


@pytest.mark.parametrize('loss', ['kernel', 'softmax'])
def test_clean_train_checkpoint_then_advtest(mnist_dir, tmp_path, loss):
    out = str(tmp_path / 'train')
    assert run_main(['--out', out, *settings(mnist_dir, 'DEFAULT.advtest=false', loss=loss,
                                             epochs=2)]) == 0
    train = read_results(out)
    assert [e['epoch'] for e in train['epochs']] == [0, 1]
    assert all(e['test_samples'] == N_TEST and e['train_samples'] == N_TRAIN for e in train['epochs'])
    assert train['epochs'][1]['train_loss'] < train['epochs'][0]['train_loss']
    assert os.path.isfile(os.path.join(out, 'config.yaml'))
    assert os.path.isdir(os.path.join(out, 'tb')) and os.listdir(os.path.join(out, 'tb'))

    # The released format: {'net': 'module.*' state dict, 'epoch': int}, plus resume state.
    ckpt = load_checkpoint(os.path.join(out, 'best.pth'))
    assert all(key.startswith('module.layers.') for key in ckpt['net'])
    assert isinstance(ckpt['epoch'], int) and ckpt['config']['Network']['loss'] == loss

    test_out = str(tmp_path / 'test')
    assert run_main(['--out', test_out, *settings(
        mnist_dir, 'DEFAULT.cleantrain=false', f"DEFAULT.ckpt={os.path.join(out, 'best.pth')}",
        loss=loss)]) == 0
    rows = read_results(test_out)['robustness']
    assert [(r['attack'], r['eps']) for r in rows] == [
        ('clean', 0.0), ('fgsm', 0.1), ('rfgsm', 0.1), ('pgd', 0.1), ('bim', 0.1)]
    assert all(r['n_samples'] == N_TEST for r in rows)
    assert rows[0]['accuracy'] == pytest.approx(train['best']['test_acc'])
    assert rows[3]['accuracy'] <= rows[0]['accuracy']  # PGD never helps


def test_released_checkpoint_loads_strictly(mnist_dir, tmp_path):
    """The golden full MNIST TA-LIF state dict ('module.' keys, the released NDS inside) saved as
    {'net', 'epoch'} evaluates; a bare state dict too; a wrong layout is refused by name."""
    state = load_golden('hosnn_kernel.pt')['mnist_alif']['state_dict']
    released = tmp_path / 'released.pth'
    torch.save({'net': state, 'epoch': 100}, released)
    bare = tmp_path / 'bare.pth'
    torch.save({k[len('module.'):]: v for k, v in state.items()}, bare)
    for ckpt in (released, bare):
        out = str(tmp_path / ckpt.stem)
        assert run_main(['--out', out, *settings(mnist_dir, 'DEFAULT.cleantrain=false',
                                                 f'DEFAULT.ckpt={ckpt}', model='ALIF',
                                                 small=False)]) == 0
        assert read_results(out)['robustness'][0]['n_samples'] == N_TEST
    wrong = tmp_path / 'wrong.pth'
    torch.save({'net': {k: v for k, v in state.items() if 'theta_v' not in k}, 'epoch': 1}, wrong)
    code = run_main(['--out', str(tmp_path / 'w'), *settings(
        mnist_dir, 'DEFAULT.cleantrain=false', f'DEFAULT.ckpt={wrong}', model='ALIF', small=False)])
    assert code == UserError.exit_status


def test_nds_recording_matches_a_manual_mean(mnist_dir, tmp_path):
    """save_target: the NDS is the per-layer mean pre-reset membrane potential over every
    training sample, in a file the TA-LIF network of the same architecture loads."""
    out = str(tmp_path / 'lif')
    nds_path = str(tmp_path / 'nds.pt')
    assert run_main(['--out', out, '--nds-out', nds_path, *settings(
        mnist_dir, 'DEFAULT.advtest=false', 'Network.save_target=true')]) == 0
    nds = torch.load(nds_path, weights_only=True)
    assert set(nds) == {'conv_1', 'conv_2', 'FC_1', 'output'}
    assert tuple(nds['conv_1'].shape) == (4, 24, 24, 5) and tuple(nds['FC_1'].shape) == (32, 1, 1, 5)
    alif_out = str(tmp_path / 'alif')
    assert run_main(['--out', alif_out, *settings(mnist_dir, 'DEFAULT.advtest=false',
                                                  f'Network.ckpt_v={nds_path}', model='ALIF')]) == 0
    alif = load_checkpoint(os.path.join(alif_out, 'last.pth'))['net']
    torch.testing.assert_close(alif['module.layers.0.target_train'], nds['conv_1'])


def test_bad_set_and_non_numeric_epsilon_exit_nonzero(mnist_dir, tmp_path, capsys):
    assert run_main(['--set', 'Network.epochs']) == UserError.exit_status
    assert "--set 'Network.epochs'" in capsys.readouterr().err
    assert run_main(['--set', 'Network.lr=fast']) == UserError.exit_status
    assert 'Network.lr' in capsys.readouterr().err
    assert run_main(['--set', "ATTACK.strength=[\"__import__('os')\"]"]) == UserError.exit_status
    assert 'ATTACK.strength[0]' in capsys.readouterr().err


def test_missing_data_offline_names_the_files(tmp_path, capsys, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError('network unreachable (test)')
    monkeypatch.setattr(urllib.request, 'urlopen', offline)
    empty = tmp_path / 'no-data'
    code = run_main(['--out', str(tmp_path / 'o'), '--set', f'Network.data_path={empty}'])
    assert code == UserError.exit_status
    err = capsys.readouterr().err
    assert 'MNIST' in err and 'train-images-idx3-ubyte' in err and str(empty) in err


class _RunsCode:
    """Unpickling this object would create the file below: a checkpoint that runs code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_unsafe_checkpoint_is_refused_before_it_runs(mnist_dir, tmp_path, capsys):
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save({'net': {}, 'epoch': 0, 'payload': _RunsCode(str(marker))}, evil)
    code = run_main(['--out', str(tmp_path / 'o'), *settings(
        mnist_dir, 'DEFAULT.cleantrain=false', f'DEFAULT.ckpt={evil}')])
    assert code == UserError.exit_status
    err = capsys.readouterr().err
    assert 'refused' in err and str(evil) in err
    assert not marker.exists()


def test_existing_run_needs_resume(mnist_dir, tmp_path, capsys):
    out = str(tmp_path / 'run')
    args = ['--out', out, *settings(mnist_dir, 'DEFAULT.advtest=false')]
    assert run_main(args) == 0
    assert run_main(args) == UserError.exit_status
    assert '--resume' in capsys.readouterr().err


def _state(out_dir):
    return load_checkpoint(os.path.join(out_dir, 'last.pth'))


def test_resume_gives_the_uninterrupted_result(mnist_dir, tmp_path):
    """Epochs 0-2 in one go == epoch 0, then --resume for epochs 1-2 (dropout, shuffling and
    the optimiser continue where they stopped)."""
    common = settings(mnist_dir, 'DEFAULT.advtest=false', 'Layers.FC_1.threshold=0.8')
    once = str(tmp_path / 'once')
    assert run_main(['--out', once, *common, '--set', 'Network.epochs=3']) == 0
    split = str(tmp_path / 'split')
    assert run_main(['--out', split, *common, '--set', 'Network.epochs=1']) == 0
    assert run_main(['--out', split, '--resume', *common, '--set', 'Network.epochs=3']) == 0
    a, b = _state(once), _state(split)
    assert a['epoch'] == b['epoch'] == 2
    for key in a['net']:
        assert torch.equal(a['net'][key], b['net'][key]), key
    assert [e['train_loss'] for e in read_results(once)['epochs']] == \
        [e['train_loss'] for e in read_results(split)['epochs']]


@pytest.mark.slow
def test_kill_mid_epoch_then_resume(mnist_dir, tmp_path):
    """kill -9 during training (deterministically: the HOSNN_FAULT_KILL_AT_STEP hook SIGKILLs the
    process at global step 12 * 2 + 5, mid epoch 2), then --resume: the run finishes from the
    last epoch, the dead run's lock and temporary file are cleaned up, no corrupt file."""
    out = str(tmp_path / 'killed')
    cmd = [sys.executable, os.path.join(ROOT, 'main.py'), '-d', '0', '--out', out,
           *settings(mnist_dir, 'DEFAULT.advtest=false', epochs=4, batch=8)]  # 12 steps/epoch
    killed = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True,
                            env={**os.environ, 'HOSNN_FAULT_KILL_AT_STEP': str(12 * 2 + 5)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = os.path.join(out, 'last.pth')
    assert load_checkpoint(last)['epoch'] == 1
    assert os.path.exists(os.path.join(out, '.lock'))  # left by the dead run: taken over
    with open(os.path.join(out, '.last.pth.dead.tmp'), 'wb') as f:  # as a kill mid-save leaves
        f.write(b'half a checkpoint')
    done = subprocess.run(cmd + ['--resume'], cwd=str(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_checkpoint(last)['epoch'] == 3
    assert [e['epoch'] for e in read_results(out)['epochs']] == list(range(4))
    assert not [f for f in os.listdir(out) if f.endswith('.tmp') or f == '.lock']


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(mnist_dir, tmp_path):
    """Equivalence: 2 ranks x batch 8 (DDP) == 1 process x batch 16, in float64. The
    DistributedSampler gives the two ranks the two halves of each single-process batch; with
    the softmax loss (a batch mean) the DDP-averaged gradient is the single-process gradient; no
    BatchNorm or dropout in this net. So the weights agree to rounding, the test accuracies
    exactly, and each run counts all 33 test samples once (17 + 16 on two ranks)."""
    common = settings(mnist_dir, 'DEFAULT.dtype=float64', 'DEFAULT.advtest=true', loss='softmax',
                      epochs=2)
    single = str(tmp_path / 'single')
    assert run_main(['--out', single, *common, '--set', 'Network.batch_size=16']) == 0
    double = str(tmp_path / 'ddp')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         os.path.join(ROOT, 'main.py'), '-d', '0', '--out', double, *common,
         '--set', 'Network.batch_size=8'],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _state(single), _state(double)
    for key in a['net']:
        torch.testing.assert_close(a['net'][key], b['net'][key], rtol=1e-9, atol=1e-12)
    ra, rb = read_results(single), read_results(double)
    assert rb['world_size'] == 2
    assert [e['test_acc'] for e in ra['epochs']] == [e['test_acc'] for e in rb['epochs']]
    assert all(r['n_samples'] == N_TEST for r in ra['robustness'] + rb['robustness'])

    def deterministic(rows):  # R-FGSM's random start differs between ranks' RNG streams
        return [(r['attack'], r['accuracy']) for r in rows if r['attack'] != 'rfgsm']
    assert deterministic(ra['robustness']) == deterministic(rb['robustness'])
