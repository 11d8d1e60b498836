"""Adaptive robustness evaluation: attacks that see the TA-LIF dynamics, threat models, the
per-sample worst case and the sanity checks of a trustworthy robustness number (issue 9).

The published attacks (SPEC §6, ``attack.py``) differentiate the published backward, which
passes nothing through the adaptive threshold or the membrane across time steps. This module
adds attacks that can also use the exact BPTT gradient (``layers/bptt.py``) with a sweep of
surrogates, margin losses, random starts and restarts, AutoAttack's APGD and Square (from
``torchattacks``, not rewritten), and transfer from a partner model; and it reports, per image,
whether *any* attack of the suite fooled it.

Units. Model inputs are normalised images repeated over time, ``x[B, C, H, W, T]``. A threat
model (:class:`ThreatModel`) turns a pixel ε into model units ``ε / std_c`` (per channel) and
says what may be perturbed: ``per-step`` (published: every time step separately) or ``static``
(one perturbation of the image, repeated over T: what a camera image allows), clamped to the
valid pixel range or not (published MNIST family: not). Our attacks optimise the perturbation
``delta`` itself (``[B, C, H, W, T]`` or ``[B, C, H, W]``), so ``delta = 0`` is the clean input
bit for bit.

Scores. ``predict`` takes the argmax of ``out.sum(-1)``; every loss here is computed on those
class scores, so "the loss went up" and "the prediction changed" talk about the same numbers.

Verification. Whatever an attack returns is projected onto the threat model's ε-ball (a no-op
for a correct attack) and classified again by the plain model under ``no_grad``: an image is
*fooled* only if that prediction is wrong. Rows, the worst case and per_sample.npz all come from
these verified predictions.
"""
import io
import json
import os
import time
from fractions import Fraction

import numpy as np
import torch

from layers import time_expand
from layers.bptt import PUBLISHED, SURROGATES, gradient_path_name, use_gradient_path

from robustness.adaptive_attacks import LOSSES, AttackSpec, ThreatModel, class_scores, eps_text, run_attack
from attack import ATTACKS, Normalization
from training.diagnostics import SpikeMonitor, diagnose
from runtime.provenance import git_commit, sha256_of, versions

SUITES = ('published', 'quick', 'full')
PUBLISHED_LABEL = 'published attack'
SANITY_EPS = Fraction(64, 255)  # the worst case must fall to <= 1% here, else masking is suspected
SANITY_MAX_ACCURACY = 0.01
ZERO_GRADIENT_MAX_SHARE = 0.10  # more images than this with an exactly-zero input gradient fails
BLACK_BOX_MAX_EXTRA = 0.01      # Square may break at most this share of images white-box missed
PUBLISHED_ATTACKS = ('fgsm', 'rfgsm', 'pgd', 'bim')  # the published test, in its order

# --- the suite ----------------------------------------------------------------------------------

def gradient_paths(suite):
    """The gradient paths a suite sweeps (the published backward first)."""
    if suite == 'published':
        return [PUBLISHED]
    if suite == 'quick':
        return [PUBLISHED, 'bptt:published:5', 'bptt:fast-sigmoid:2.5']
    sweep = [PUBLISHED]
    for shape, surrogate in SURROGATES.items():
        for factor in (0.5, 1, 2):
            sweep.append(gradient_path_name(f"bptt:{shape}:{surrogate.default_sharpness * factor}"))
    return sweep


def suite_plan(suite, threat, eps, partner=False, sanity=False, largest=False):
    """The attacks of ``suite`` at one ε and threat model, in the order they run."""
    plan = []
    if threat == 'per-step':  # the published attacks perturb every time step
        plan += [AttackSpec(f"published-{name}", PUBLISHED, 'published',
                            {'fgsm': 1, 'rfgsm': 1, 'pgd': 7, 'bim': 7}[name])
                 for name in PUBLISHED_ATTACKS]
    if suite == 'published':
        return plan
    if suite == 'quick' or sanity:
        paths = gradient_paths('quick')
        plan += [AttackSpec('pgd', path, 'ce', 10) for path in paths]
        plan += [AttackSpec('pgd', path, 'cw', 10) for path in paths]
        plan += [AttackSpec('apgd-ce', 'best:1', 'ce', 25), AttackSpec('apgd-dlr', 'best:1', 'dlr', 25)]
        if largest and not sanity:
            plan += [AttackSpec('pgd', 'best:1', 'ce', 7), AttackSpec('pgd', 'best:1', 'ce', 100)]
        if partner and not sanity:
            plan.append(AttackSpec('transfer-pgd', 'partner:bptt:published:5', 'ce', 20))
        return plan
    # full: a PGD-CE sweep over every surrogate shape and sharpness ranks the gradient paths,
    # then the strongest ones carry the expensive attacks.
    plan += [AttackSpec('pgd', path, 'ce', 10) for path in gradient_paths('full')]  # 19 paths
    for rank in ('best:1', 'best:2'):
        plan += [AttackSpec('pgd', rank, 'cw', 20, 2), AttackSpec('apgd-ce', rank, 'ce', 50),
                 AttackSpec('apgd-dlr', rank, 'dlr', 50)]
    plan.append(AttackSpec('apgd-t', 'best:1', 'dlr-targeted', 25))
    plan += [AttackSpec('pgd', 'best:1', 'ce', 7), AttackSpec('pgd', 'best:1', 'ce', 100)]
    if partner:
        plan.append(AttackSpec('transfer-pgd', 'partner:bptt:published:5', 'ce', 20))
        plan.append(AttackSpec('transfer-pgd', 'partner:bptt:published:5', 'cw', 20))
        plan.append(AttackSpec('transfer-pgd', 'partner:published', 'ce', 20))
    if largest:  # 5000 queries per surviving image: at the largest eps only (the masking check)
        plan.append(AttackSpec('square', 'none', 'margin', 5000, survivors=True))
    return plan


def row_label(row):
    if row['attack'].startswith('published-'):
        return f"{row['attack'][len('published-'):].upper()} ({PUBLISHED_LABEL})"
    return f"{row['attack']} [{row['gradient']}, {row['loss']}, {row['steps']}x{row['restarts']}]"


class Evaluation:
    """Runs suites on one process's shard of the sample set and keeps, per row, which of its
    images were fooled (1), not fooled (0) or not attacked (-1)."""

    def __init__(self, model, images, labels, indices, ctx, batch_size, published_attack,
                 partner=None, log=print, all_reduce=None):
        self.model, self.partner = model, partner
        self.images, self.labels = images, labels  # on the model's device
        self.indices = indices.cpu()  # per-sample bookkeeping stays on the CPU
        self.ctx, self.batch_size = ctx, batch_size
        self.published_attack = published_attack
        self.log = log
        self.all_reduce = all_reduce or (lambda values: torch.as_tensor(values, dtype=torch.float64))
        self.n_steps = model.settings.n_steps
        self.clean_correct = self._predictions_correct()
        self.rows, self.fooled, self.checks, self.timings = [], [], [], {}

    def _batches(self, index):
        for start in range(0, len(index), self.batch_size):
            yield index[start:start + self.batch_size]

    def _predictions_correct(self):
        correct = torch.zeros(len(self.labels), dtype=torch.bool)
        with torch.no_grad():
            for batch in self._batches(torch.arange(len(self.labels))):
                x, y = self._take(batch)
                correct[batch] = (class_scores(self.model, x).argmax(1) == y).cpu()
        return correct

    def _take(self, batch):
        """The time-expanded inputs and labels of the CPU index ``batch``, on the device."""
        on_device = batch.to(self.labels.device)
        return time_expand(self.images[on_device], self.n_steps), self.labels[on_device]

    def global_count(self, *values):
        return [int(v) for v in self.all_reduce(list(values)).tolist()]

    def _rank_paths(self, group_rows):
        """Gradient paths of this group's white-box PGD rows, strongest (lowest accuracy) first."""
        best = {}
        for row in group_rows:
            if row['attack'] == 'pgd' and not row['gradient'].startswith(('partner', 'none')):
                best[row['gradient']] = min(best.get(row['gradient'], 2.0), row['accuracy'])
        return sorted(best, key=lambda path: best[path])  # stable: ties keep the sweep order

    def run_group(self, suite, threat, eps_list, partner=False, largest_eps=None, sanity=False):
        """Every attack of ``suite`` at every ε of ``eps_list`` under ``threat``."""
        for eps in eps_list:
            group_rows = []
            robust = self.clean_correct.clone()  # robust to every attack so far (this group)
            plan = suite_plan(suite, threat.threat, eps, partner=partner and self.partner is not None,
                              sanity=sanity, largest=eps == largest_eps)
            for spec in plan:
                gradient = spec.gradient
                if gradient.startswith('best:'):
                    ranked = self._rank_paths(group_rows)
                    n = int(gradient.split(':')[1])
                    if n > len(ranked):
                        continue  # fewer paths than ranks: the same attack would run twice
                    gradient = ranked[n - 1]
                row = self._run_row(spec, gradient, threat, eps, robust, sanity)
                group_rows.append(row)
            self._log_worst(threat, eps, robust)

    def _run_row(self, spec, gradient, threat, eps, robust, sanity):
        start = time.perf_counter()
        fooled = (~self.clean_correct).to(torch.int8)
        targets = robust if spec.survivors else self.clean_correct
        index = targets.nonzero()[:, 0]
        if spec.survivors:
            fooled[~robust & self.clean_correct] = -1  # not attacked: already broken
        partner_path = gradient[len('partner:'):] if gradient.startswith('partner:') else gradient
        for batch in self._batches(index):
            x, y = self._take(batch)
            x_adv = run_attack(spec, partner_path, self.model, self.partner, x, y, threat, eps,
                             self.published_attack)
            with torch.no_grad():
                wrong = (class_scores(self.model, x_adv.detach()).argmax(1) != y).cpu()
            fooled[batch] = wrong.to(torch.int8)
        robust &= fooled != 1
        if spec.survivors:
            not_fooled = int(robust.sum())  # the row of a survivors-only attack: the worst case after it
        else:
            not_fooled = int((fooled == 0).sum())
        correct, n = self.global_count(not_fooled, len(self.labels))
        row = {'attack': spec.attack, 'gradient': gradient, 'loss': spec.loss, 'steps': spec.steps,
               'restarts': spec.restarts, 'eps': eps_text(eps), 'threat': threat.threat,
               'clamp': threat.clamp, 'accuracy': correct / max(n, 1), 'n_samples': n,
               'scope': 'survivors' if spec.survivors else 'all',
               'path_choice': spec.gradient if spec.gradient.startswith('best:') else 'fixed',
               'label': PUBLISHED_LABEL if spec.published else 'adaptive',
               'sanity_eps': sanity, 'time_s': round(time.perf_counter() - start, 3)}
        self.rows.append(row)
        self.fooled.append(fooled)
        self.log(f"  {row_label(row):<58} eps={row['eps']:<7} {threat.threat:<8} "
                 f"clamp={str(threat.clamp).lower():<5} {100 * row['accuracy']:6.2f}%  "
                 f"({row['time_s']:.0f}s)")
        return row

    def _log_worst(self, threat, eps, robust):
        correct, n = self.global_count(int(robust.sum()), len(self.labels))
        self.log(f"  worst case at eps={eps_text(eps)} ({threat.threat}, clamp="
                 f"{str(threat.clamp).lower()}): {100 * correct / max(n, 1):.2f}% of {n}")

    def zero_gradient_shares(self, paths, threat):
        """Per gradient path: the share of clean-correct images whose input gradient of the CE
        loss on the class scores is exactly zero."""
        shares = {}
        index = self.clean_correct.nonzero()[:, 0]
        for path in paths:
            zero = 0
            for batch in self._batches(index):
                x, y = self._take(batch)
                delta = torch.zeros(threat.delta_shape(x), dtype=x.dtype, device=x.device,
                                    requires_grad=True)
                with use_gradient_path(self.model, path), torch.enable_grad():
                    scores = class_scores(self.model, threat.apply(x, delta))
                    (grad,) = torch.autograd.grad(LOSSES['ce'](scores, y).sum(), delta)
                zero += int((grad.flatten(1) == 0).all(1).sum())
            zero, n = self.global_count(zero, len(index))
            shares[path] = (zero, n)
        return shares


# --- gathering, worst case, checks --------------------------------------------------------------

def gather(evaluation, all_gather):
    """Every rank's per-sample results -> one table in the original sample order (rank 0)."""
    local = {'indices': evaluation.indices.numpy(), 'labels': evaluation.labels.cpu().numpy(),
             'clean_correct': evaluation.clean_correct.numpy(),
             'fooled': (torch.stack(evaluation.fooled).numpy() if evaluation.fooled
                        else np.zeros((0, len(evaluation.labels)), dtype=np.int8))}
    parts = all_gather(local)
    indices = np.concatenate([p['indices'] for p in parts])
    order = np.argsort(indices, kind='stable')
    return {'sample_index': indices[order],
            'labels': np.concatenate([p['labels'] for p in parts])[order],
            'clean_correct': np.concatenate([p['clean_correct'] for p in parts])[order],
            'fooled': np.concatenate([p['fooled'] for p in parts], axis=1)[:, order]}


def worst_case(rows, table):
    """Per (ε, threat, clamp): the share of images that no attack fooled, and how many images
    each attack broke first (in the order the attacks ran; 'clean' = misclassified unattacked)."""
    groups = {}
    for index, row in enumerate(rows):
        groups.setdefault((row['eps'], row['threat'], row['clamp']), []).append(index)
    results = []
    for (eps, threat, clamp), members in groups.items():
        broken = ~table['clean_correct'].astype(bool)
        first = {'clean': int(broken.sum())}
        for index in members:
            newly = (table['fooled'][index] == 1) & ~broken
            first[row_label(rows[index])] = int(newly.sum())
            broken |= newly
        n = len(broken)
        results.append({'eps': eps, 'threat': threat, 'clamp': clamp,
                        'accuracy': float((~broken).sum() / max(n, 1)), 'n_samples': int(n),
                        'broken_first': first,
                        'sanity_eps': any(rows[i].get('sanity_eps') for i in members)})
    return results


def sanity_checks(rows, worst, zero_shares):
    """The checks of a trustworthy robustness number, each ``{check, passed, detail}``."""
    checks = []
    for entry in worst:
        if Fraction(entry['eps']) != SANITY_EPS:
            continue
        passed = entry['accuracy'] <= SANITY_MAX_ACCURACY
        checks.append({'check': f"worst case <= {100 * SANITY_MAX_ACCURACY:g}% at eps={entry['eps']} "
                                f"({entry['threat']}, clamp={str(entry['clamp']).lower()})",
                       'passed': passed,
                       'detail': f"worst case {100 * entry['accuracy']:.2f}%" +
                                 ('' if passed else ': gradient masking suspected')})
    if not any(Fraction(e['eps']) == SANITY_EPS for e in worst):
        checks.append({'check': f"worst case <= {100 * SANITY_MAX_ACCURACY:g}% at eps=64/255",
                       'passed': None, 'detail': 'not run (--no-sanity-eps)'})
    pgd_by_steps = {}
    for row in rows:
        if row['attack'] == 'pgd' and row['steps'] in (7, 100) and row['loss'] == 'ce' \
                and row['restarts'] == 1:
            key = (row['eps'], row['threat'], row['clamp'], row['gradient'])
            pgd_by_steps.setdefault(key, {})[row['steps']] = row
    compared = False
    for (eps, threat, clamp, gradient), by_steps in pgd_by_steps.items():
        if 7 in by_steps and 100 in by_steps:
            compared = True
            a7, a100 = by_steps[7]['accuracy'], by_steps[100]['accuracy']
            n = by_steps[7]['n_samples']
            passed = a100 <= a7 + 1 / max(n, 1)  # one image of slack for the random starts
            checks.append({'check': f"PGD-100 not weaker than PGD-7 at eps={eps} ({threat}, "
                                    f"clamp={str(clamp).lower()}, {gradient})",
                           'passed': passed,
                           'detail': f"PGD-7 {100 * a7:.2f}%, PGD-100 {100 * a100:.2f}%"})
    if not compared:
        checks.append({'check': 'PGD-100 not weaker than PGD-7', 'passed': None,
                       'detail': 'this suite has no PGD-7/PGD-100 pair'})
    square = [r for r in rows if r['attack'] == 'square']
    for row in square:
        before = [r for r in rows if (r['eps'], r['threat'], r['clamp']) ==
                  (row['eps'], row['threat'], row['clamp']) and r['attack'] != 'square']
        white = [r for r in before if not r['attack'].startswith('transfer')]
        entry = next(e for e in worst if (e['eps'], e['threat'], e['clamp']) ==
                     (row['eps'], row['threat'], row['clamp']))
        extra = entry['broken_first'].get(row_label(row), 0)
        n = row['n_samples']
        passed = extra <= BLACK_BOX_MAX_EXTRA * n
        checks.append({'check': f"black-box (Square) not stronger than white-box at eps={row['eps']} "
                                f"({row['threat']}, clamp={str(row['clamp']).lower()})",
                       'passed': passed,
                       'detail': f"Square fooled {extra} of {n} images that all {len(white)} "
                                 f"white-box attacks missed (allowed: {BLACK_BOX_MAX_EXTRA * n:g})"})
    if not square:
        checks.append({'check': 'black-box not stronger than white-box', 'passed': None,
                       'detail': 'this suite has no black-box attack (use --suite full)'})
    for (threat, clamp, path), (zero, n) in zero_shares.items():
        share = zero / max(n, 1)
        checks.append({'check': f"share of exactly-zero input gradients ({path}, {threat}, "
                                f"clamp={str(clamp).lower()})",
                       'passed': share <= ZERO_GRADIENT_MAX_SHARE,
                       'detail': f"{zero} of {n} clean-correct images ({100 * share:.1f}%)"})
    return checks


# --- provenance and reports ---------------------------------------------------------------------

def per_sample_arrays(rows, table, worst):
    """The per_sample.npz payload: plain arrays only (loadable with ``allow_pickle=False``)."""
    group_of = {(e['eps'], e['threat'], e['clamp']): i for i, e in enumerate(worst)}
    worst_robust = np.zeros((len(worst), len(table['labels'])), dtype=bool)
    for key, i in group_of.items():
        broken = ~table['clean_correct'].astype(bool)
        for index, row in enumerate(rows):
            if (row['eps'], row['threat'], row['clamp']) == key:
                broken |= table['fooled'][index] == 1
        worst_robust[i] = ~broken
    return {'sample_index': table['sample_index'].astype(np.int64),
            'labels': table['labels'].astype(np.int64),
            'clean_correct': table['clean_correct'].astype(bool),
            'fooled': table['fooled'].astype(np.int8),
            'rows': np.array([json.dumps({k: r[k] for k in ('attack', 'gradient', 'loss', 'steps',
                                                             'restarts', 'eps', 'threat', 'clamp')})
                              for r in rows], dtype=np.str_),
            'worst_case_robust': worst_robust,
            'worst_case_groups': np.array([json.dumps({k: e[k] for k in ('eps', 'threat', 'clamp')})
                                           for e in worst], dtype=np.str_)}


def report_markdown(result):
    """report.md: the tables, the worst case, the checks, in words a reader can act on."""
    ckpt = result['checkpoint']
    lines = [f"# Robustness report: `{ckpt['path']}`", '',
             f"Checkpoint epoch {ckpt['epoch']}, sha256 `{ckpt['sha256'][:16]}…`; commit "
             f"`{result['commit']}`; suite `{result['suite']}`; {result['n_samples']} test images "
             f"(the first {result['n_samples']}); clean accuracy {100 * result['clean_accuracy']:.2f}%; "
             f"{result['world_size']} process(es) on {result['device']}; {result['wall_time_s']:.0f} s.",
             '']
    lines += [f"**Warning**: {warning}" for warning in result.get('warnings', [])]
    masking = [c for c in result['sanity'] if c['check'].startswith('worst case') and c['passed'] is False]
    if masking:
        lines += ['**Gradient masking suspected**: the worst case does not fall to '
                  f"{100 * SANITY_MAX_ACCURACY:g}% at ε = 64/255 — the robust accuracies below are "
                  'upper bounds that stronger attacks may lower.', '']
    lines += ["Rows marked *published attack* are the published FGSM / R-FGSM / PGD / BIM "
              "(SPEC §6: the published backward, the published loss, no random start); the others "
              "are adaptive (the published attacks perturb every time step, so they run under the "
              "per-step threat model only). `gradient` is the backward the attack differentiates "
              "(`published`, or exact BPTT `bptt:<surrogate>:<sharpness>`); `none` = black box; "
              "`partner:` = crafted on the partner model (transfer). Square runs only on images "
              "that every earlier attack missed, so its row is the worst case after it; the full "
              "suite runs it at the largest ε of the list only (5000 queries per image).", '',
              '## Worst case (an image counts as robust only if no attack fooled it)', '',
              '| ε | threat | clamp | worst-case accuracy (%) | images |', '|---|---|---|---:|---:|']
    for entry in result['worst_case']:
        lines.append(f"| {entry['eps']} | {entry['threat']} | {str(entry['clamp']).lower()} | "
                     f"**{100 * entry['accuracy']:.2f}** | {entry['n_samples']} |")
    lines += ['', '## Every attack', '',
              '| attack | gradient | loss | steps×restarts | ε | threat | clamp | accuracy (%) | '
              'first to break | time (s) |', '|---|---|---|---|---|---|---|---:|---:|---:|']
    first = {(e['eps'], e['threat'], e['clamp']): e['broken_first'] for e in result['worst_case']}
    for row in result['rows']:
        name = (f"{row['attack'][len('published-'):].upper()} (*{PUBLISHED_LABEL}*)"
                if row['label'] == PUBLISHED_LABEL else row['attack'])
        broke = first[(row['eps'], row['threat'], row['clamp'])].get(row_label(row), '')
        lines.append(f"| {name} | {row['gradient']} | {row['loss']} | {row['steps']}×{row['restarts']}"
                     f"{' (survivors)' if row['scope'] == 'survivors' else ''} | {row['eps']} | "
                     f"{row['threat']} | {str(row['clamp']).lower()} | {100 * row['accuracy']:.2f} | "
                     f"{broke} | {row['time_s']:.0f} |")
    lines += ['', '## Sanity checks', '', '| check | result | detail |', '|---|---|---|']
    for check in result['sanity']:
        verdict = {True: 'pass', False: '**FAIL**', None: 'not run'}[check['passed']]
        lines.append(f"| {check['check']} | {verdict} | {check['detail']} |")
    lines += ['', result.get('plot_note') or '![robust accuracy against ε](robust_accuracy.png)', '']
    return '\n'.join(lines)


def plot_png(result):
    """robust_accuracy.png as bytes (accuracy against ε per attack and the worst case), or None
    when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups = sorted({(r['threat'], r['clamp']) for r in result['rows']})
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(9 * max(len(groups), 1), 5),
                             squeeze=False)
    for ax, (threat, clamp) in zip(axes[0], groups):
        rows = [r for r in result['rows'] if (r['threat'], r['clamp']) == (threat, clamp)]
        # A path sweep (more than 3 paths for one attack) is drawn as its strongest path per eps,
        # and a path chosen per eps ("the strongest so far") as one series across eps.
        swept = {}
        for row in rows:
            if row.get('path_choice', 'fixed') == 'fixed':
                key = (row['attack'], row['loss'], row['steps'], row['restarts'])
                swept.setdefault(key, set()).add(row['gradient'])
        series = {}
        for row in rows:
            key = (row['attack'], row['loss'], row['steps'], row['restarts'])
            if row.get('path_choice', 'fixed') != 'fixed':
                named = dict(row, gradient=row['path_choice'].replace('best:', 'strongest path #'))
            elif len(swept.get(key, ())) > 3:
                named = dict(row, gradient=f"strongest of {len(swept[key])} paths")
            else:
                named = row
            points = series.setdefault(row_label(named), {})
            eps = float(Fraction(row['eps']))
            points[eps] = min(points.get(eps, 2.0), row['accuracy'])
        for name, points in series.items():
            xs = sorted(points)
            style = ':' if PUBLISHED_LABEL in name else '-'
            ax.plot([e * 255 for e in xs], [100 * points[e] for e in xs], style, marker='.',
                    linewidth=1, alpha=0.8, label=name)
        worst = sorted((float(Fraction(e['eps'])), e['accuracy']) for e in result['worst_case']
                       if (e['threat'], e['clamp']) == (threat, clamp))
        ax.plot([p[0] * 255 for p in worst], [100 * p[1] for p in worst], 'k-', marker='o',
                linewidth=2.5, label='worst case (all attacks)')
        ax.set_title(f"{threat}, clamp={str(clamp).lower()}")
        finish_accuracy_axes(ax, legend_fontsize=6)
    return figure_png(fig)


def finish_accuracy_axes(ax, legend_fontsize):
    """Axis labels, range, grid and an outside legend of an accuracy-against-ε panel."""
    ax.set_xlabel('ε × 255 (pixels)')
    ax.set_ylabel('accuracy (%)')
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_fontsize, loc='upper left', bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0)


def figure_png(fig):
    """The figure as PNG bytes (written atomically by the caller); the figure is closed."""
    import matplotlib.pyplot as plt
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=110, bbox_inches='tight')
    plt.close(fig)
    return buffer.getvalue()


# --- one evaluation, end to end -----------------------------------------------------------------

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
                   all_reduce=None, all_gather=None):
    """Run ``suite`` on this process's shard (``images`` normalised ``[n, C, H, W]``, their
    ``labels`` and global sample ``indices``) under every threat model and clamp setting; gather
    the per-sample results of all ranks. Returns ``(result, table)``; ``result`` holds the rows,
    the worst case and the sanity checks (the same on every rank)."""
    if suite not in SUITES:
        raise ValueError(f"suite {suite!r}: choose one of {', '.join(SUITES)}")
    all_gather = all_gather or (lambda obj: [obj])
    start = time.perf_counter()
    model.eval()
    if partner is not None:
        partner.eval()
    evaluation = Evaluation(model, images, labels, indices, ctx, batch_size, published_attack,
                            partner=partner, log=log, all_reduce=all_reduce)
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
            for path, share in evaluation.zero_gradient_shares(gradient_paths(suite), threat).items():
                zero_shares[(threat_name, clamp, path)] = share
    table = gather(evaluation, all_gather)
    rows = evaluation.rows
    worst = worst_case(rows, table)
    checks = sanity_checks(rows, worst, zero_shares)
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
                        log=print):
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
        sanity_eps=sanity_eps, log=log, all_reduce=lambda values: all_reduce_sum(ctx, values),
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
