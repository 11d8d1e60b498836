"""Every side effect of a run, in one place, done by rank 0 only: console lines, tqdm progress,
TensorBoard scalars, ``results.json``, the resolved config and the checkpoints. On other ranks
every method is a no-op (progress bars pass the iterable through)."""
import json
import os
import sys
import time

import torch
from tqdm import tqdm

from attack import attack_label
from runtime.checkpoint import atomic_write, atomic_write_text, remove_stale_temporaries, save_checkpoint
from config import dump_config
from training.diagnostics import format_rate
from layers.network import OUTPUT_LAYER
from runtime.formatting import eps_text
from runtime.provenance import git_commit, versions


class RunOutputs:
    def __init__(self, out_dir, ctx, config, results=None, resume=False):
        self.out_dir = out_dir
        self.active = ctx.is_main
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
            os.makedirs(out_dir, exist_ok=True)
            if resume:
                remove_stale_temporaries(out_dir)  # a kill during a save leaves one behind
            atomic_write_text(os.path.join(out_dir, 'config.yaml'), dump_config(config))

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
            atomic_write_text(os.path.join(self.out_dir, 'results.json'),
                              json.dumps(self.results, indent=1, default=float) + '\n')

    def write_text(self, name, text):
        if self.active:
            atomic_write_text(os.path.join(self.out_dir, name), text)

    def save_checkpoint(self, name, model_without_ddp, epoch, **extra):
        if self.active:
            save_checkpoint(os.path.join(self.out_dir, name), model_without_ddp, epoch, **extra)

    def save_nds(self, path, nds):
        if self.active:
            atomic_write(path, lambda f: torch.save(nds, f))
            self.log(f"NDS of {len(nds)} layers saved to {path}")

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


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
