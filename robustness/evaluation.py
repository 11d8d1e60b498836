"""One evaluation of a model on a set of images (what ``robustness.evaluate`` runs): the suites
under every threat model on this process's shard, the gathered per-sample table, the worst case
and the checks. The checkpoint driver around it (data, outputs) is ``checkpoint_evaluation.py``."""
import time
from fractions import Fraction

import torch

from attack import ATTACKS, Normalization
from layers import time_expand
from robustness.checks import SANITY_EPS, gather, sanity_checks, worst_case
from robustness.paths import gradient_paths_for
from robustness.plan import SUITES
from robustness.suite import Evaluation
from robustness.threats import ThreatModel
from runtime.formatting import eps_text
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
                   all_reduce=None, all_gather=None, standalone=False, budget='full'):
    """Run ``suite`` on this process's shard (``images`` normalised ``[n, C, H, W]``, their
    ``labels`` and global sample ``indices``) under every threat model and clamp setting; gather
    the per-sample results of all ranks. ``standalone``: every attack on every image (a per-attack
    table) instead of the cascade (expensive attacks only on the images still robust); ``budget``:
``plan.BUDGETS``. Returns ``(result, table)``; ``result`` holds the rows,
    the worst case and the sanity checks (the same on every rank)."""
    if suite not in SUITES:
        raise ValueError(f"suite {suite!r}: choose one of {', '.join(SUITES)}")
    all_gather = all_gather or (lambda obj: [obj])
    start = time.perf_counter()
    model.eval()
    if partner is not None:
        partner.eval()
    evaluation = Evaluation(model, images, labels, indices, ctx, batch_size, published_attack,
                            partner=partner, log=log, all_reduce=all_reduce, standalone=standalone,
                            budget=budget)
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


