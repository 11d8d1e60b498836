"""Faults of several processes and of one --out (issue 19 items 6c, 6d): a write that fails on rank 0
(its disk, mid-run) ends every rank with one line and exit status 2; protocol.py locks its
top-level --out, so two protocol runs on one --out never interleave."""
import os
import re
import subprocess
import sys

import pytest
import torch.distributed as dist

import protocol
from conftest import ROOT
from runtime import outputs, rundir
from runtime.checkpoint import OutputWriteError, load_checkpoint
from runtime.distributed import DistContext
from test_checkpoint_model import small
from errors import UserError


@pytest.fixture
def one_rank_group(tmp_path):
    """A real (gloo, world size 1) process group: the collective code path in one process."""
    dist.init_process_group('gloo', init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        yield DistContext()
    finally:
        dist.destroy_process_group()


def test_a_failed_write_is_kept_until_the_ranks_agree(tmp_path, monkeypatch, one_rank_group):
    """Under a process group rank 0 does not raise mid-epoch (the other ranks would be left in a
    collective): it keeps the failure, writes nothing more, and every rank raises it at the next
    agreement point."""
    ctx = one_rank_group
    assert ctx.distributed
    out = tmp_path / 'run'
    run = outputs.RunOutputs(str(out), ctx, {'a': 1})
    run.write_results()
    good = (out / 'results.json').read_text()

    def broken(path, text):
        raise OutputWriteError(f"no space left on {out} (writing '{path}')")
    monkeypatch.setattr(outputs, 'atomic_write_text', broken)
    run.results['x'] = 1
    run.write_results()  # fails: kept, not raised
    assert run.failure.startswith('no space left on')
    monkeypatch.undo()
    run.write_text('later.txt', 'x')  # nothing more is written after a failure
    assert not (out / 'later.txt').exists() and (out / 'results.json').read_text() == good
    with pytest.raises(OutputWriteError, match='no space left on'):
        run.check_writes()


def test_one_process_still_raises_at_once(tmp_path, monkeypatch):
    run = outputs.RunOutputs(str(tmp_path / 'run'), DistContext(), {'a': 1})
    monkeypatch.setattr(outputs, 'atomic_write_text',
                        lambda path, text: (_ for _ in ()).throw(OutputWriteError('disk gone')))
    with pytest.raises(OutputWriteError, match='disk gone'):
        run.write_results()


def test_save_error_hook_fails_the_save_of_its_epoch(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(outputs.FAULT_SAVE_ERROR_ENV, '1')
    out = tmp_path / 'run'
    code = runner_main(mnist_dir, out, epochs=3)
    err = capsys.readouterr().err.strip()
    # the first save of epoch 1 fails (best.pth when it improved, else last.pth)
    assert code == UserError.exit_status and 'Traceback' not in err, err
    assert re.fullmatch(rf"error: cannot write '{re.escape(str(out))}/(best|last)\.pth': "
                        r"Input/output error", err.splitlines()[-1]), err
    assert load_checkpoint(str(out / 'last.pth'))['epoch'] == 0  # epoch 0's save is intact


def runner_main(mnist_dir, out, epochs):
    import main
    return main.main(['-d', '0', '--out', str(out), *small(
        mnist_dir, 'Network.model=LIF', f'Network.epochs={epochs}', 'Network.batch_size=8',
        'DEFAULT.advtest=false')])


@pytest.mark.slow
def test_save_error_on_rank_0_ends_every_rank_in_one_line(mnist_dir, tmp_path):
    """2-process torchrun; rank 0's disk fails while it saves epoch 1: both ranks print one line
    and exit with status 2 themselves (torchrun's report lists exit code 2 for both; before,
    rank 1 died in a collective when rank 0 left). --monitor-interval 5: torchrun SIGTERMs
    the workers still alive once it notices one exit, and both must have exited by then."""
    out, logs = tmp_path / 'run', tmp_path / 'logs'
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         '--monitor-interval=5', '--log-dir', str(logs), '--redirects', '3',
         os.path.join(ROOT, 'main.py'), '-d', '0', '--out', str(out),
         *small(mnist_dir, 'Network.model=LIF', 'Network.epochs=3', 'Network.batch_size=8',
                'DEFAULT.advtest=false')],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
        env={**os.environ, outputs.FAULT_SAVE_ERROR_ENV: '1', 'OMP_NUM_THREADS': '1'})
    assert proc.returncode != 0
    report = dict(re.findall(r"rank\s*: (\d) \(local_rank.*?\n\s*exitcode\s*: (-?\d+)", proc.stderr))
    assert report == {'0': '2', '1': '2'}, proc.stderr[-3000:]
    for rank in (0, 1):
        [stderr] = [os.path.join(d, 'stderr.log') for d, _, files in os.walk(logs)
                    if 'stderr.log' in files and os.path.basename(d) == str(rank)]
        text = open(stderr).read()
        assert text.count('error:') == 1 and 'Traceback' not in text, text[-2000:]
        assert f"cannot write '{out}" in text and 'Input/output error' in text
    assert load_checkpoint(str(out / 'last.pth'))['epoch'] == 0
    assert not (out / rundir.LOCK_NAME).exists()


def test_protocol_locks_its_out(mnist_dir, tmp_path, capsys):
    """A second protocol run on a --out whose run lives is refused before it writes anything."""
    out = tmp_path / 'protocol'
    args = ['-d', '0', '--out', str(out), '--lif-epochs', '1', '--hosnn-epochs', '1',
            '--ft-epochs', '1', *small(mnist_dir)]
    with rundir.RunDirectory(str(out)):  # the first run, alive (its lock: <out>/.lock)
        code = protocol.main(args)
        err = capsys.readouterr().err.strip()
        assert code == UserError.exit_status and '\n' not in err
        assert f'--out {out} is in use by another run (pid {os.getpid()}' in err
        assert sorted(os.listdir(out)) == [rundir.LOCK_NAME]  # no stage, no results.json
