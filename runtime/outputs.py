"""Every side effect of a run, in one place, done by rank 0 only: console lines, tqdm progress,
TensorBoard scalars, ``results.json``, the resolved config and the checkpoints. On other ranks
every method is a no-op (progress bars pass the iterable through).

A write that fails on rank 0 (full disk, I/O error: an OutputWriteError) must end every rank, each with
the same one line and exit status 2 -- not rank 0 alone, leaving the others to die in torchrun's
teardown. So under several processes rank 0 records the failure (and writes nothing more), and
the ranks agree on it at the points every rank passes together: each checkpoint save (every
epoch), the NDS save, the end of the RunOutputs, and ``check_writes()``; there every rank raises.
One process raises at once."""
import errno
import json
import os
import sys
import time

import torch
from tqdm import tqdm

from attack import attack_label
from errors import UserError
from runtime.checkpoint import (OutputWriteError, atomic_write, atomic_write_text,
                                output_error, remove_stale_temporaries, save_checkpoint)
from config import dump_config
from training.diagnostics import format_rate
from layers.network import OUTPUT_LAYER
from runtime.distributed import all_gather_object
from runtime.formatting import eps_text
from runtime.provenance import git_commit, versions


FAULT_SAVE_ERROR_ENV = 'HOSNN_FAULT_SAVE_ERROR_AT_EPOCH'  # tests: rank 0's checkpoint save of epoch k fails


def fault_save_error_epoch():
    """The epoch whose checkpoint save a test wants to fail on rank 0 with an I/O error
    (``HOSNN_FAULT_SAVE_ERROR_AT_EPOCH``); None normally."""
    value = os.environ.get(FAULT_SAVE_ERROR_ENV)
    return int(value) if value not in (None, '') else None


class RunOutputs:
    def __init__(self, out_dir, ctx, config, results=None, resume=False):
        self.out_dir = out_dir
        self.ctx = ctx
        self.active = ctx.is_main
        self.failure = None  # rank 0's first failed write, until the ranks agree on it
        self.save_error_epoch = fault_save_error_epoch()
        self.results = results if results is not None else {
            'run': os.path.basename(os.path.normpath(out_dir)),
            'started': time.strftime('%Y-%m-%d %H:%M:%S'),
            'world_size': ctx.world_size,
            'device': str(ctx.device),
            'config': config,
            'epochs': [],
        }
        self._writer = None
        if self.active:
            # Per launch: a resumed run may continue on another commit or machine.
            self.results.setdefault('launches', []).append({
                'started': time.strftime('%Y-%m-%d %H:%M:%S'), 'commit': git_commit(),
                'versions': versions(), 'world_size': ctx.world_size, 'device': str(ctx.device)})
            self._write(lambda: self._start_directory(config, resume))
        self.check_writes()

    def _start_directory(self, config, resume):
        try:
            os.makedirs(self.out_dir, exist_ok=True)
        except OSError as exc:
            raise output_error(exc, self.out_dir) from None
        if resume:
            remove_stale_temporaries(self.out_dir)  # a kill during a save leaves one behind
        atomic_write_text(os.path.join(self.out_dir, 'config.yaml'), dump_config(config))

    def _write(self, write):
        """Run one of rank 0's writes. A failure (a UserError: OutputWriteError, a NaN checkpoint)
        is raised at once in one process; under several it is kept for check_writes() and rank 0
        writes nothing more (the files already written stay as they are)."""
        if not self.active or self.failure is not None:
            return
        try:
            write()
        except UserError as exc:
            if not self.ctx.distributed:
                raise
            self.failure = str(exc)

    def check_writes(self):
        """Every rank must call it at the same point: if rank 0 failed to write, every rank raises
        the same one-line OutputWriteError (exit status 2 on every rank)."""
        if not self.ctx.distributed:
            return
        failure = all_gather_object(self.ctx, self.failure)[0]
        if failure is not None:
            error = OutputWriteError(failure if self.active else f"{failure} (on rank 0)")
            error.on_every_rank = True
            raise error

    @property
    def writer(self):
        """TensorBoard, created at the first scalar (a run that fails before has no tb/ folder) in
        a subfolder of ``tb/`` per launch, so that runs and resumed runs never mix their events."""
        if self._writer is None and self.active:
            from torch.utils.tensorboard import SummaryWriter  # deferred: slow import
            self._writer = SummaryWriter(launch_directory(os.path.join(self.out_dir, 'tb')))
            self.results.setdefault('tensorboard', []).append(
                os.path.relpath(self._writer.log_dir, self.out_dir))
        return self._writer

    def log(self, message):
        if self.active:
            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    def progress(self, iterable, desc=None, total=None, leave=True):
        if not self.active:
            return iterable
        return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True,
                    mininterval=1.0, file=sys.stderr)

    def add_epoch(self, metrics):
        """Per-epoch metrics -> TensorBoard and results.json."""
        if not self.active:
            return
        epoch = metrics['epoch']
        for key, value in metrics.items():
            if key != 'epoch' and isinstance(value, (int, float)):
                self.writer.add_scalar(key.replace('_', '/', 1), value, epoch)
        # Per-layer firing rates of the clean test pass (layers without a neuron have none).
        for layer, rate in (metrics.get('firing_rate') or {}).items():
            if rate is not None:
                self.writer.add_scalar(f"firing_rate/{layer}", rate, epoch)
        self.results['epochs'].append(metrics)
        self.write_results()
        rate = metrics.get('firing_rate', {}).get(OUTPUT_LAYER)
        self.log(f"epoch {epoch}: train loss {metrics['train_loss']:.4f} acc "
                 f"{100 * metrics['train_acc']:.2f}% | test acc {100 * metrics['test_acc']:.2f}% "
                 f"({metrics['test_samples']} samples)"
                 f"{'' if rate is None else f' | output rate {rate:.4f}'}"
                 f" | {metrics['train_time_s']:.0f}s")

    def set_result(self, key, value):
        if self.active:
            self.results[key] = value
            self.write_results()

    def add_robustness(self, rows, key='robustness'):
        """The adversarial-test rows -> TensorBoard, results.json and a table on the console."""
        if not self.active:
            return
        for row in rows:
            self.writer.add_scalar(f"{key}/{row['attack']}_eps{row['eps']:.4f}", row['accuracy'])
            if row.get('output_rate') is not None:
                self.writer.add_scalar(f"{key}_output_rate/{row['attack']}_eps{row['eps']:.4f}",
                                       row['output_rate'])
        self.set_result(key, rows)
        self.log(format_robustness_table(rows))

    def write_results(self):
        if self.active:
            self.results['updated'] = time.strftime('%Y-%m-%d %H:%M:%S')
            self._write(lambda: atomic_write_text(
                os.path.join(self.out_dir, 'results.json'),
                json.dumps(self.results, indent=1, default=float) + '\n'))

    def write_text(self, name, text):
        self._write(lambda: atomic_write_text(os.path.join(self.out_dir, name), text))

    def save_checkpoint(self, name, model_without_ddp, epoch, **extra):
        """Every rank calls it (rank 0 writes): the ranks agree here on rank 0's writes."""
        path = os.path.join(self.out_dir, name)

        def save():
            if epoch == self.save_error_epoch:  # HOSNN_FAULT_SAVE_ERROR_AT_EPOCH: a failing disk
                raise output_error(OSError(errno.EIO, os.strerror(errno.EIO)), path)
            save_checkpoint(path, model_without_ddp, epoch, **extra)
        self._write(save)
        self.check_writes()

    def save_nds(self, path, nds):
        """Every rank calls it (rank 0 writes), like save_checkpoint."""
        self._write(lambda: atomic_write(path, lambda f: torch.save(nds, f)))
        self.check_writes()
        self.log(f"NDS of {len(nds)} layers saved to {path}")

    def close(self):
        """Every rank calls it at the end of the run: the last agreement on rank 0's writes."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.check_writes()


def launch_directory(tb_root):
    """``<tb_root>/<date>-<time>[-k]``: a new, unused folder for this launch's events."""
    stamp = time.strftime('%Y%m%d-%H%M%S')
    path, k = os.path.join(tb_root, stamp), 1
    while os.path.exists(path):
        k += 1
        path = os.path.join(tb_root, f"{stamp}-{k}")
    return path


def format_robustness_table(rows):
    """``attack | eps | accuracy | samples | output rate`` as aligned text (the output layer's
    mean spikes per neuron per step; n/a for a softmax read-out, which does not spike). The
    published attacks' rows say so (attack.attack_label); eps is a fraction (4/255)."""
    width = max([10] + [len(attack_label(row['attack'])) for row in rows])
    lines = [f"{'attack':<{width}} {'eps':>8} {'accuracy':>9} {'samples':>8} {'output rate':>12}"]
    for row in rows:
        lines.append(f"{attack_label(row['attack']):<{width}} {eps_text(row['eps']):>8} "
                     f"{100 * row['accuracy']:>8.2f}% "
                     f"{row['n_samples']:>8d} {format_rate(row.get('output_rate')):>12}")
    return '\n'.join(lines)
