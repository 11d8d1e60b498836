"""One evaluation, end to end (the driver evaluate.py and protocol.py call): the sample shard, the
suites under every threat model, the gathered per-sample table, the checks, and on rank 0 the
output files, each written atomically."""
import json
import os
import time
from fractions import Fraction

import numpy as np
import torch

from attack import ATTACKS, Normalization
from layers import time_expand
from robustness.checks import SANITY_EPS, gather, sanity_checks, worst_case
from robustness.paths import gradient_paths_for
from robustness.plan import SUITES
from robustness.plots import plot_png
from robustness.report import per_sample_arrays, report_markdown
from robustness.suite import Evaluation
from robustness.threats import ThreatModel
from runtime.formatting import eps_text
from runtime.provenance import git_commit, sha256_of, versions
from training.diagnostics import SpikeMonitor, diagnose


def published_attack_fn(network_cfg):
    """The published attacks of ``attack.py`` (unchanged), called with a pixel ε: they divide by
    the YAML's scalar ``Network.std`` and clamp with its scalar mean/std (SPEC §6)."""
    normalization = Normalization.of(network_cfg)

    def run(name, model, x, labels, eps, clamp):
        return ATTACKS[name](model, x, labels, normalization.to_model_units(float(eps)),
                             normalization.bounds() if clamp else None)
    return run


def run_evaluation(model, images, labels, indices, ctx, *, suite, eps_list, threats, clamps, mean,
                   std, batch_size, published_attack, partner=None, sanity_eps=True, log=print,
                   all_reduce=None, all_gather=None, standalone=False):
    """Run ``suite`` on this process's shard (``images`` normalised ``[n, C, H, W]``, their
    ``labels`` and global sample ``indices``) under every threat model and clamp setting; gather
    the per-sample results of all ranks. ``standalone``: every attack on every image (a per-attack
    table) instead of the cascade (expensive attacks only on the images still robust). Returns ``(result, table)``; ``result`` holds the rows,
    the worst case and the sanity checks (the same on every rank)."""
    if suite not in SUITES:
        raise ValueError(f"suite {suite!r}: choose one of {', '.join(SUITES)}")
    all_gather = all_gather or (lambda obj: [obj])
    start = time.perf_counter()
    model.eval()
    if partner is not None:
        partner.eval()
    evaluation = Evaluation(model, images, labels, indices, ctx, batch_size, published_attack,
                            partner=partner, log=log, all_reduce=all_reduce, standalone=standalone)
    eps_list = [Fraction(e) for e in eps_list]
    zero_shares = {}
    for threat_name in threats:
        for clamp in clamps:
            threat = ThreatModel(threat_name, clamp, tuple(mean), tuple(std), model.settings.n_steps)
            log(f"== {suite} suite, {threat_name} perturbation, "
                f"{'clamped to' if clamp else 'not clamped to'} the pixel range")
            evaluation.run_group(suite, threat, eps_list, partner=partner is not None,
                                 largest_eps=max(eps_list) if eps_list else None)
            if sanity_eps and SANITY_EPS not in eps_list:
                log(f"== sanity: eps={eps_text(SANITY_EPS)}")
                evaluation.run_group(suite, threat, [SANITY_EPS], sanity=True)
            for path, share in evaluation.zero_gradient_shares(gradient_paths_for(model, suite), threat).items():
                zero_shares[(threat_name, clamp, path)] = share
    table = gather(evaluation, all_gather)
    rows = evaluation.rows
    worst = worst_case(rows, table)
    checks = sanity_checks(rows, worst, zero_shares) + evaluation.checks  # + attack adequacy
    clean, n = evaluation.global_count(int(evaluation.clean_correct.sum()), len(labels))
    result = {'suite': suite, 'n_samples': n, 'clean_accuracy': clean / max(n, 1), 'rows': rows,
              'worst_case': worst, 'sanity': checks,
              'wall_time_s': round(time.perf_counter() - start, 1)}
    for check in checks:
        verdict = {True: 'PASS', False: 'FAIL', None: 'n/a '}[check['passed']]
        log(f"  [{verdict}] {check['check']}: {check['detail']}")
    return result, table


def write_outputs(out_dir, result, table):
    """robustness.json, per_sample.npz, report.md and robust_accuracy.png into ``out_dir``, each
    written atomically (call on rank 0 only)."""
    from runtime.checkpoint import atomic_write, atomic_write_text
    os.makedirs(out_dir, exist_ok=True)
    png = plot_png(result)
    if png is None:
        result['plot_note'] = ('No plot: matplotlib is not installed (`pip install matplotlib`, '
                               'listed in requirements.txt).')
    else:
        atomic_write(os.path.join(out_dir, 'robust_accuracy.png'), lambda f: f.write(png))
    arrays = per_sample_arrays(result['rows'], table, result['worst_case'])
    atomic_write(os.path.join(out_dir, 'per_sample.npz'), lambda f: np.savez_compressed(f, **arrays))
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


def spike_warnings(model, images, ctx, batch_size):
    """diagnostics.diagnose on a clean pass over the sample set: a model whose output layer never
    spikes, or that predicts one class, scores chance in every row -- say so instead."""
    model.eval()
    n_steps = model.settings.n_steps
    with torch.no_grad(), SpikeMonitor(model) as monitor:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            model(time_expand(batch, n_steps), False)
    return diagnose(monitor.stats(ctx), 'evaluate.py, clean test images')


def evaluate_checkpoint(cfg, model, ckpt_path, ctx, *, suite, eps_list, threats, clamps, out_dir,
                        partner=None, partner_path=None, batch_size=None, sanity_eps=True,
                        log=print, standalone=False):
    """evaluate.py's work for one model (also used by protocol.py --suite): the sample shard,
    the suite, and on rank 0 the output files. Returns the result (robustness.json's content)."""
    from runtime.checkpoint import load_checkpoint
    from datasets import NORMALISATION
    from runtime.distributed import all_gather_object, all_reduce_sum
    commit = git_commit()  # now: the code of this run, not what the tree holds when it ends
    images, labels, indices = load_samples(cfg, ctx)
    dtype = next(model.parameters()).dtype
    images, labels = images.to(ctx.device, dtype), labels.to(ctx.device)
    mean, std = NORMALISATION[cfg['Network']['dataset']]
    log(f"{ckpt_path}: {cfg['Network']['model']} network, {suite} suite, eps "
        f"{', '.join(eps_text(e) for e in eps_list)}, {ctx.world_size} process(es) on "
        f"{ctx.device} -> {out_dir}")
    warnings = spike_warnings(model, images, ctx, batch_size or cfg['Network']['batch_size'])
    for warning in warnings:
        log(f"warning: {warning}")
    torch.manual_seed(cfg['DEFAULT']['seed'] + 1000 * ctx.rank)  # random starts differ per rank
    result, table = run_evaluation(
        model, images, labels, indices, ctx, suite=suite, eps_list=eps_list, threats=threats,
        clamps=clamps, mean=mean, std=std, batch_size=batch_size or cfg['Network']['batch_size'],
        published_attack=published_attack_fn(cfg['Network']), partner=partner,
        sanity_eps=sanity_eps, log=log, standalone=standalone,
        all_reduce=lambda values: all_reduce_sum(ctx, values),
        all_gather=lambda obj: all_gather_object(ctx, obj))
    ckpt = load_checkpoint(ckpt_path)
    result = {'checkpoint': {'path': ckpt_path, 'sha256': sha256_of(ckpt_path),
                             'epoch': ckpt.get('epoch') if isinstance(ckpt, dict) else None},
              'commit': commit, 'versions': versions(), 'partner': partner_path,
              'world_size': ctx.world_size, 'device': str(ctx.device), 'config': cfg,
              'warnings': warnings, **result}
    if ctx.is_main:
        write_outputs(out_dir, result, table)
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
