"""The evaluation of one checkpoint, end to end (what evaluate.py, protocol.py --suite and the
demo run): this rank's shard of the test images, :func:`robustness.api.evaluate` on it, and on
rank 0 the output files, each written atomically."""
import json
import os
from fractions import Fraction

import numpy as np
import torch

from robustness.api import evaluate
from robustness.plots import plot_png
from robustness.report import report_markdown
from runtime.formatting import eps_text
from runtime.provenance import git_commit, sha256_of, versions


def write_outputs(out_dir, result, per_sample):
    """robustness.json, per_sample.npz (``per_sample``: name -> array), report.md and
    robust_accuracy.png into ``out_dir``, each written atomically (call on rank 0 only)."""
    from runtime.checkpoint import atomic_write, atomic_write_text
    os.makedirs(out_dir, exist_ok=True)
    png = plot_png(result)
    if png is None:
        result['plot_note'] = ('No plot: matplotlib is not installed (`pip install matplotlib`, '
                               'listed in requirements.txt).')
    else:
        atomic_write(os.path.join(out_dir, 'robust_accuracy.png'), lambda f: f.write(png))
    atomic_write(os.path.join(out_dir, 'per_sample.npz'), lambda f: np.savez_compressed(f, **per_sample))
    atomic_write_text(os.path.join(out_dir, 'report.md'), report_markdown(result))
    atomic_write_text(os.path.join(out_dir, 'robustness.json'),
                      json.dumps(result, indent=1, default=float) + '\n')


def load_samples(cfg, ctx):
    """This rank's shard of the first ``DEFAULT.test_samples`` test images (all when null):
    ``(images, labels, global indices)``; rank r takes samples r, r + world, ..."""
    from datasets import build_datasets
    network = cfg['Network']
    _, test_set = build_datasets(network['dataset'], network['data_path'], train_samples=1,
                                 test_samples=cfg['DEFAULT']['test_samples'])
    indices = list(range(ctx.rank, len(test_set), ctx.world_size))
    items = [test_set[i] for i in indices]
    if items:
        images = torch.stack([image for image, _ in items])
        labels = torch.tensor([int(label) for _, label in items], dtype=torch.int64)
    else:  # more ranks than images
        images = torch.zeros((0, *test_set[0][0].shape))
        labels = torch.zeros(0, dtype=torch.int64)
    return images, labels, torch.tensor(indices, dtype=torch.int64)


def evaluate_checkpoint(cfg, model, ckpt_path, ctx, *, suite, eps_list, threats, clamps, out_dir,
                        partner=None, partner_path=None, batch_size=None, sanity_eps=True,
                        log=print, standalone=False):
    """:func:`robustness.api.evaluate` of ``model`` (built from ``ckpt_path`` under ``cfg``) on
    this rank's shard, with the data set's normalisation, the published attacks' scalar YAML
    mean/std (SPEC §6) and a per-rank seed; on rank 0 the output files. Returns the result
    (robustness.json's content: the API's, plus the checkpoint, commit, versions and config)."""
    from datasets import NORMALISATION
    from runtime.checkpoint import load_checkpoint
    from runtime.distributed import all_gather_object, all_reduce_sum
    commit = git_commit()  # now: the code of this run, not what the tree holds when it ends
    images, labels, indices = load_samples(cfg, ctx)
    mean, std = NORMALISATION[cfg['Network']['dataset']]
    log(f"{ckpt_path}: {cfg['Network']['model']} network, {suite} suite, eps "
        f"{', '.join(eps_text(e) for e in eps_list)}, {ctx.world_size} process(es) on "
        f"{ctx.device} -> {out_dir}")
    result = evaluate(
        model, images, labels, list(eps_list), suite=suite, threat=list(threats),
        clamp=list(clamps), mean=mean, std=std, device=ctx.device,
        published_normalization=(cfg['Network']['mean'], cfg['Network']['std']),
        batch_size=batch_size or cfg['Network']['batch_size'], partner=partner,
        sanity_eps=sanity_eps, standalone=standalone,
        seed=cfg['DEFAULT']['seed'] + 1000 * ctx.rank,  # random starts differ per rank
        log=log, ctx=ctx, indices=indices,
        all_reduce=lambda values: all_reduce_sum(ctx, values),
        all_gather=lambda obj: all_gather_object(ctx, obj))
    per_sample = result.pop('per_sample')
    ckpt = load_checkpoint(ckpt_path)
    result = {'checkpoint': {'path': ckpt_path, 'sha256': sha256_of(ckpt_path),
                             'epoch': ckpt.get('epoch') if isinstance(ckpt, dict) else None},
              'commit': commit, 'versions': versions(), 'partner': partner_path,
              'world_size': ctx.world_size, 'device': str(ctx.device), 'config': cfg, **result}
    if ctx.is_main:
        write_outputs(out_dir, result, per_sample)
        log("worst case: " + ', '.join(
            f"{100 * e['accuracy']:.2f}% at {e['eps']} ({e['threat']}, clamp={str(e['clamp']).lower()})"
            for e in result['worst_case']) + f" -> {os.path.join(out_dir, 'report.md')}")
    return result


def protocol_rows(models, partners, cfgs, ckpt_paths, out_dirs, suite, eps_list, ctx, log):
    """For protocol.py --suite: each model's worst case under ``suite`` (per-step, the config's
    clamp; transfer from its partner), as rows of the protocol table
    ``{'attack': 'worst case (<suite> suite)', 'eps', 'n_samples', <model>: accuracy}``; every
    model's report goes to ``out_dirs[model]``."""
    table = {}
    for name, model in models.items():
        cfg = cfgs[name]
        result = evaluate_checkpoint(
            cfg, model, ckpt_paths[name], ctx, suite=suite, eps_list=eps_list,
            threats=['per-step'], clamps=[bool(cfg['ATTACK']['clamp'])], out_dir=out_dirs[name],
            partner=models[partners[name]], partner_path=ckpt_paths[partners[name]], log=log)
        for entry in result['worst_case']:
            if Fraction(entry['eps']) in eps_list:
                row = table.setdefault(entry['eps'], {
                    'attack': f"worst case ({suite} suite)", 'eps': float(Fraction(entry['eps'])),
                    'n_samples': entry['n_samples']})
                row[name] = entry['accuracy']
    return list(table.values())
