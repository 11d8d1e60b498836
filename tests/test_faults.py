"""Faults a long run meets: non-finite numbers, full/read-only disks, paths through files, empty or
foreign checkpoints, a second run on the same --out, a crash mid-epoch. Each must end in one line
and exit status 2 (or work), with no traceback and no good file overwritten.

Tests run as root here, where chmod does not stop writes: a read-only or full disk is a real
tmpfs mount when this machine allows mounting, and an injected EROFS/ENOSPC otherwise (or too)."""
import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
import torch

from runtime import checkpoint
from training import guards
from runtime import rundir
from runtime.checkpoint import (CheckpointError, OutputWriteError, atomic_write_text,
                                load_checkpoint, save_checkpoint)
from training.resume import check_resumable
from conftest import ROOT, SMALL_LAYERS, set_flags, write_mnist_dir
from runtime.distributed import DistContext


# ----------------------------------------------------------------------------- helpers

def _can_mount():
    if not sys.platform.startswith('linux') or os.geteuid() != 0 or not shutil.which('mount'):
        return False
    probe = tempfile.mkdtemp()
    try:
        ok = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(['umount', probe], check=True)
        return ok
    finally:
        os.rmdir(probe)


CAN_MOUNT = _can_mount()


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(options) -> path`` of a fresh tmpfs (skipped where mounting is not allowed)."""
    if not CAN_MOUNT:
        pytest.skip('cannot mount a tmpfs here (not root / no mount)')
    mounted = []

    def mount(options):
        path = tmp_path / f'mnt{len(mounted)}'
        path.mkdir()
        subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)], check=True)
        mounted.append(path)
        return path
    yield mount
    for path in mounted:
        subprocess.run(['umount', '-l', str(path)], check=False)


class _Tiny(torch.nn.Module):
    def __init__(self, value=1.0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((3, 4), value))
        self.register_buffer('theta', torch.ones(4))


# ----------------------------------------------------------------------------- atomic writes

def test_outputs_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(str(tmp_path / 'a.json'), '{}')
        os.umask(0o077)
        atomic_write_text(str(tmp_path / 'b.json'), '{}')
    finally:
        os.umask(old)
    assert os.stat(tmp_path / 'a.json').st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / 'b.json').st_mode & 0o777 == 0o600


@pytest.mark.parametrize('code, words', [(errno.ENOSPC, 'no space left on'),
                                         (errno.EROFS, 'read-only file system'),
                                         (errno.EACCES, 'no permission')])
def test_a_failed_write_is_one_line_and_keeps_the_good_file(tmp_path, monkeypatch, code, words):
    good = tmp_path / 'best.pth'
    save_checkpoint(str(good), _Tiny(1.0), 0)

    def fail(fd):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(checkpoint.os, 'fsync', fail)
    with pytest.raises(OutputWriteError) as info:
        save_checkpoint(str(good), _Tiny(2.0), 1)
    message = str(info.value)
    assert words in message and str(tmp_path) in message and '\n' not in message
    assert load_checkpoint(str(good))['epoch'] == 0  # the good checkpoint is untouched
    assert os.listdir(tmp_path) == ['best.pth']  # no temporary left behind


def test_full_tmpfs_says_no_space_and_keeps_the_good_file(tmpfs):
    disk = tmpfs('size=256k')
    path = str(disk / 'last.pth')
    save_checkpoint(path, _Tiny(1.0), 0)
    big = _Tiny()
    big.weight = torch.nn.Parameter(torch.zeros(200_000))  # 800 kB > 256 kB
    with pytest.raises(OutputWriteError, match=f'no space left on {disk}'):
        save_checkpoint(path, big, 1)
    assert load_checkpoint(path)['epoch'] == 0 and os.listdir(disk) == ['last.pth']


def test_read_only_tmpfs_says_read_only(tmpfs):
    disk = tmpfs('ro,size=64k')
    with pytest.raises(OutputWriteError, match='read-only file system'):
        atomic_write_text(str(disk / 'results.json'), '{}')
    with pytest.raises(OutputWriteError, match='read-only file system'):
        rundir.RunDirectory(str(disk / 'run')).acquire()


def test_paths_through_a_file(tmp_path):
    afile = tmp_path / 'afile'
    afile.write_text('x')
    with pytest.raises(OutputWriteError, match=f"'{afile}' is a file, not a directory"):
        atomic_write_text(str(afile / 'sub' / 'results.json'), '{}')
    for out in (afile, afile / 'run'):
        with pytest.raises(OutputWriteError, match=f"'{afile}' is a file, not a directory"):
            rundir.RunDirectory(str(out)).acquire()
    assert afile.read_text() == 'x'


# ----------------------------------------------------------------------------- checkpoints

def test_unusable_checkpoints_are_one_line_errors(tmp_path):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'hello')
    for path, words in ((empty, 'is empty (0 bytes)'), (garbage, 'cannot be read'),
                        (tmp_path, 'is a directory'), (tmp_path / 'missing.pth', 'does not exist')):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(str(path))
        assert words in str(info.value) and str(path) in str(info.value)
        assert '\n' not in str(info.value)


def test_nan_checkpoint_is_refused_naming_the_tensor(tmp_path):
    state = {'module.layers.0.weight': torch.ones(3), 'module.layers.0.theta_v': torch.ones(2)}
    state['module.layers.0.theta_v'][1] = float('inf')
    path = tmp_path / 'nan.pth'
    torch.save({'net': state, 'epoch': 2}, path)
    with pytest.raises(CheckpointError, match="tensor 'module.layers.0.theta_v' holds 1 NaN/Inf"):
        load_checkpoint(str(path))


def test_nan_weights_are_never_written(tmp_path):
    model = _Tiny(float('nan'))
    with pytest.raises(CheckpointError, match="refusing to write .*'module.weight'"):
        save_checkpoint(str(tmp_path / 'best.pth'), model, 0)
    assert not os.listdir(tmp_path)


def test_released_format_is_not_a_resume_point(tmp_path):
    with pytest.raises(CheckpointError, match='DEFAULT.ckpt'):
        check_resumable({'net': {}, 'epoch': 100}, 'last.pth')


def test_empty_nds_file_is_a_config_error(tmp_path):
    from config import ConfigError
    from layers.network import read_nds_file
    empty = tmp_path / 'nds.pt'
    empty.write_bytes(b'')
    with pytest.raises(ConfigError, match='is empty'):
        read_nds_file(str(empty))
    torch.save({'conv_1': torch.tensor([float('nan')])}, empty)
    with pytest.raises(ConfigError, match="layer 'conv_1' holds NaN"):
        read_nds_file(str(empty))


# ----------------------------------------------------------------------------- run directory

def test_run_directory_lock_refuses_a_second_run(tmp_path):
    out = tmp_path / 'run'
    with rundir.RunDirectory(str(out)) as first:
        holder = (out / rundir.LOCK_NAME).read_text().split()
        assert holder == [str(os.getpid()), socket.gethostname()]
        with pytest.raises(OutputWriteError) as info:
            rundir.RunDirectory(str(out)).acquire()
        message = str(info.value)
        assert 'in use by another run' in message and str(os.getpid()) in message
        assert rundir.LOCK_NAME in message
        assert first.held
    assert not (out / rundir.LOCK_NAME).exists()  # released at the end
    rundir.RunDirectory(str(out)).acquire()  # and free again


@pytest.mark.slow
def test_lock_held_by_another_live_process(tmp_path):
    out = tmp_path / 'run'
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys; from runtime import rundir; d = rundir.RunDirectory(sys.argv[1]); '
         'd.acquire(); print("locked", flush=True); sys.stdin.read()', str(out)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(OutputWriteError, match=f'pid {holder.pid} on'):
            rundir.RunDirectory(str(out)).acquire()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with rundir.RunDirectory(str(out)):
        pass  # the holder exited: free


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    (out / rundir.LOCK_NAME).write_text(f"{dead.pid} {socket.gethostname()}\n")
    with rundir.RunDirectory(str(out)):
        assert (out / rundir.LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_no_room_for_a_checkpoint_is_refused_before_training(tmp_path):
    out = tmp_path / 'new' / 'run'
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(OutputWriteError, match='no space left on .*one checkpoint needs about'):
        rundir.RunDirectory(str(out), needed_bytes=2 * free).acquire()
    assert not (tmp_path / 'new').exists()  # the failed run leaves no folder it created


def test_checkpoint_size_estimate():
    model = _Tiny()
    state = 12 * 4 + 4 * 4
    assert rundir.checkpoint_bytes(model, training=False) == state
    assert rundir.checkpoint_bytes(model) == state + 2 * 12 * 4


def test_open_run_directory_single_process(tmp_path):
    ctx = DistContext()
    run_dir = rundir.open_run_directory(str(tmp_path / 'run'), ctx)
    with pytest.raises(OutputWriteError, match='in use'):
        rundir.open_run_directory(str(tmp_path / 'run'), ctx)
    run_dir.release()


# ----------------------------------------------------------------------------- training guard

def _guard(model=None, n_class=10, hint='Network.lr is 1: try a smaller one'):
    guard = guards.TrainingGuard(model or _Tiny(), DistContext(), n_class, hint)
    guard.start_epoch(3, steps_per_epoch=50)
    return guard


def test_guard_names_the_first_non_finite_step():
    guard = _guard()
    one = torch.tensor(1.0)
    for step in range(guards.CHECK_EVERY - 1):
        loss = torch.tensor(float('nan')) if step == 7 else one
        norm = torch.tensor(float('inf')) if step in (5, 9) else one
        guard.after_step(step, loss, norm)  # no host check before step CHECK_EVERY - 1
    with pytest.raises(guards.TrainingDiverged) as info:
        guard.after_step(guards.CHECK_EVERY - 1, one, one)
    message = str(info.value)
    assert 'gradient norm is not finite at epoch 3, step 5' in message
    assert 'Network.lr is 1' in message and 'no checkpoint' in message


def test_guard_checks_weights_at_the_end_of_the_epoch():
    model = _Tiny()
    guard = _guard(model)
    guard.after_step(0, torch.tensor(2.0), torch.tensor(1.0))
    assert guard.end_epoch({'train_loss': 2.0, 'train_acc': 0.5}) is None
    with torch.no_grad():
        model.weight[0, 0] = float('nan')
    with pytest.raises(guards.TrainingDiverged, match="weight 'weight' is not finite at the end "
                                                      "of epoch 3"):
        guard.end_epoch({'train_loss': 2.0, 'train_acc': 0.5})


def test_guard_warns_once_about_chance_accuracy_with_exploding_loss():
    model = _Tiny()
    with torch.no_grad():
        model.theta.fill_(9e5)
    guard = _guard(model)
    guard.after_step(0, torch.tensor(20.0), torch.tensor(1.0))
    assert guard.end_epoch({'train_loss': 60.0, 'train_acc': 0.1}) is None  # 3x: not exploded
    assert guard.end_epoch({'train_loss': 223.0, 'train_acc': 0.5}) is None  # learning
    warning = guard.end_epoch({'train_loss': 223.0, 'train_acc': 0.09})
    assert 'at chance (10 classes)' in warning and "'theta' = 9e+05" in warning
    assert guard.end_epoch({'train_loss': 300.0, 'train_acc': 0.09}) is None  # once


def test_fault_hook_is_read_when_training_starts(monkeypatch):
    monkeypatch.delenv(guards.FAULT_KILL_ENV, raising=False)
    assert guards.TrainingGuard(_Tiny(), DistContext(), 10).kill_at_step is None
    monkeypatch.setenv(guards.FAULT_KILL_ENV, '7')
    assert guards.TrainingGuard(_Tiny(), DistContext(), 10).kill_at_step == 7


# ----------------------------------------------------------------------------- end to end (main.py)

N_TRAIN, N_TEST = 48, 16


@pytest.fixture(scope='module')
def mnist_dir(tmp_path_factory):
    return write_mnist_dir(tmp_path_factory, N_TRAIN, N_TEST)


def cli(mnist_dir, out, *extra, epochs=1, batch=16):
    sets = [f'Network.data_path={mnist_dir}', 'Network.model=LIF', f'Network.epochs={epochs}',
            f'Network.batch_size={batch}', 'Network.ckpt_v=null', 'DEFAULT.advtest=false',
            *SMALL_LAYERS, *extra]
    return ['-d', '0', '--out', str(out), *set_flags(sets)]


def run_main(args, capsys):
    """``(exit status, stderr)`` of main.main(args) in this process; stderr must be one line
    when the run fails (no traceback)."""
    import main
    capsys.readouterr()
    code = main.main(args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    if code != 0:
        assert len(errors) == 1 and 'Traceback' not in err, err
    return code, errors[0] if errors else ''


def finite_checkpoints(out):
    """Every .pth under ``out`` loads (load_checkpoint refuses NaN/Inf weights)."""
    names = sorted(f for f in os.listdir(out) if f.endswith('.pth')) if os.path.isdir(out) else []
    for name in names:
        load_checkpoint(os.path.join(out, name))
    return names


def _nan_loss_at(monkeypatch, bad_step):
    """Make the loss of the ``bad_step``-th training step (counting from 0 over the run) NaN."""
    from training import engine
    calls = {'n': 0}
    real = engine.compute_loss

    def loss(*args, **kwargs):
        value = real(*args, **kwargs)
        calls['n'] += 1
        return value * float('nan') if calls['n'] - 1 == bad_step else value
    monkeypatch.setattr(engine, 'compute_loss', loss)


def test_divergence_in_the_first_epoch_writes_no_checkpoint(mnist_dir, tmp_path, monkeypatch,
                                                            capsys):
    _nan_loss_at(monkeypatch, 1)
    out = tmp_path / 'run'
    code, err = run_main(cli(mnist_dir, out), capsys)
    assert code == 2
    assert 'training diverged' in err and 'epoch 0, step 1' in err and 'Network.lr' in err
    assert finite_checkpoints(out) == []  # no best.pth, no last.pth


def test_divergence_later_keeps_the_good_checkpoints(mnist_dir, tmp_path, monkeypatch, capsys):
    _nan_loss_at(monkeypatch, N_TRAIN // 16 + 1)  # epoch 1, step 1
    out = tmp_path / 'run'
    code, err = run_main(cli(mnist_dir, out, epochs=3), capsys)
    assert code == 2 and 'epoch 1, step 1' in err
    assert finite_checkpoints(out) == ['best.pth', 'last.pth']
    assert load_checkpoint(str(out / 'last.pth'))['epoch'] == 0


def test_unusable_files_exit_2_in_one_line(mnist_dir, tmp_path, capsys):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    good = tmp_path / 'good'
    assert run_main(cli(mnist_dir, good), capsys)[0] == 0
    state = load_checkpoint(str(good / 'best.pth'))
    key = sorted(state['net'])[0]
    poisoned = {**state['net'], key: state['net'][key].clone()}
    poisoned[key].view(-1)[0] = float('nan')
    nan = tmp_path / 'nan.pth'
    torch.save({**state, 'net': poisoned}, nan)

    for ckpt, words in ((empty, 'is empty'), (nan, f"tensor '{key}' holds 1 NaN/Inf")):
        code, err = run_main(cli(mnist_dir, tmp_path / 'eval', 'DEFAULT.cleantrain=false',
                                 'DEFAULT.advtest=true', f'DEFAULT.ckpt={ckpt}'), capsys)
        assert code == 2 and words in err and str(ckpt) in err
    code, err = run_main(cli(mnist_dir, tmp_path / 'nds', 'Network.model=ALIF',
                             f'Network.ckpt_v={empty}'), capsys)
    assert code == 2 and 'is empty' in err

    # last.pth: empty, or in the released format ({'net', 'epoch'} only), with --resume
    resumed = tmp_path / 'resumed'
    resumed.mkdir()
    (resumed / 'last.pth').write_bytes(b'')
    code, err = run_main(cli(mnist_dir, resumed, epochs=2) + ['--resume'], capsys)
    assert code == 2 and 'is empty' in err
    torch.save({'net': state['net'], 'epoch': 0}, resumed / 'last.pth')
    code, err = run_main(cli(mnist_dir, resumed, epochs=2) + ['--resume'], capsys)
    assert code == 2 and 'DEFAULT.ckpt' in err


def test_out_through_a_file_exits_2(mnist_dir, tmp_path, capsys):
    afile = tmp_path / 'afile'
    afile.write_text('keep')
    for out in (afile, afile / 'run'):
        code, err = run_main(cli(mnist_dir, out), capsys)
        assert code == 2 and f"'{afile}' is a file, not a directory" in err
    assert afile.read_text() == 'keep'


def test_read_only_out_exits_2(mnist_dir, tmp_path, monkeypatch, capsys):
    """A read-only --out (injected: root ignores chmod): refused before training, one line."""
    out = tmp_path / 'ro'
    out.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, 'open', read_only)
    code, err = run_main(cli(mnist_dir, out), capsys)
    assert code == 2 and 'read-only file system' in err and str(out) in err


def test_read_only_and_full_mounts_exit_2(mnist_dir, tmpfs, capsys):
    read_only = tmpfs('ro,size=64k')
    code, err = run_main(cli(mnist_dir, read_only / 'run'), capsys)
    assert code == 2 and 'read-only file system' in err
    full = tmpfs('size=1m')  # less than one checkpoint plus the margin: refused up front
    code, err = run_main(cli(mnist_dir, full / 'run'), capsys)
    assert code == 2 and f'no space left on {full}' in err
    assert os.listdir(full) == []  # no empty run folder left behind


def test_disk_full_at_the_first_save_keeps_nothing_half_written(mnist_dir, tmp_path, monkeypatch,
                                                                 capsys):
    real_fsync = os.fsync

    def full(fd):
        if os.readlink(f'/proc/self/fd/{fd}').endswith('.tmp') and \
                '.pth' in os.readlink(f'/proc/self/fd/{fd}'):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)
    monkeypatch.setattr(checkpoint.os, 'fsync', full)
    out = tmp_path / 'run'
    code, err = run_main(cli(mnist_dir, out), capsys)
    assert code == 2 and f'no space left on {out}' in err
    assert not [f for f in os.listdir(out) if f.endswith(('.pth', '.tmp'))]


def test_second_run_on_a_locked_out_exits_2(mnist_dir, tmp_path, capsys):
    out = tmp_path / 'run'
    with rundir.RunDirectory(str(out)):  # a first run, alive
        code, err = run_main(cli(mnist_dir, out), capsys)
        assert code == 2 and 'in use by another run' in err and rundir.LOCK_NAME in err
    assert not os.path.exists(out / 'last.pth')


def test_stale_lock_is_taken_over_by_a_run(mnist_dir, tmp_path, capsys):
    out = tmp_path / 'run'
    out.mkdir()
    (out / rundir.LOCK_NAME).write_text(f"{2**22 + 12345} {socket.gethostname()}\n")
    assert run_main(cli(mnist_dir, out), capsys)[0] == 0
    assert not (out / rundir.LOCK_NAME).exists()


@pytest.mark.slow
def test_resume_on_another_number_of_processes(mnist_dir, tmp_path):
    """A run of 2 processes (torchrun) resumed on 1: the saved per-rank RNG states do not fit,
    so they are re-derived from seed, epoch and rank, with a warning; the run finishes."""
    out = tmp_path / 'run'
    args = cli(mnist_dir, out, epochs=2)
    first = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         os.path.join(ROOT, 'main.py'), *args, '--set', 'Network.epochs=1'],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(load_checkpoint(str(out / 'last.pth'))['rng']) == 2
    resumed = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args, '--resume'],
                             cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resuming a 2-process run on 1' in resumed.stdout
    state = load_checkpoint(str(out / 'last.pth'))
    assert state['epoch'] == 1 and len(state['rng']) == 1
