"""The per-sample runner: class :class:`Evaluation` runs a suite's rows on one process's shard and
keeps, per row, which images were fooled.

Verification. Whatever an attack returns is projected onto the threat model's ε-ball (a no-op
for a correct attack) and classified again by the plain model under ``no_grad``: an image is
*fooled* only if that prediction is wrong. Rows, the worst case and per_sample.npz all come from
these verified predictions.
"""
import dataclasses
import time

import torch

from layers import time_expand
from robustness.adequacy import adequacy_check, binarization_test
from robustness.attacks import Target, run_attack
from robustness.losses import LOSSES
from robustness.paths import scores_through
from layers.surrogate import SURROGATES
from robustness.plan import (BEST, ENSEMBLE_BEST, FAMILY_BEST, PUBLISHED_LABEL, SHARPER,
                             AttackSpec, family, next_sharpness, resolve_gradient, row_label,
                             sharpest_per_family, suite_plan)
from robustness.threats import class_scores
from runtime.formatting import eps_text


def rank_paths(accuracy):
    """The swept paths (``accuracy``: path -> the sweep's accuracy), strongest first. Of two
    paths a 10-step PGD finds equally strong, the sharper goes first (:func:`sharpness`)."""
    return sorted(accuracy, key=lambda path: (accuracy[path], -sharpness(path)))


def sharpness(path):
    """A swept path's sharpness (0 for the published backward and autograd): the ranking's
    tie-break. The sharper path goes first because APGD is strongest through a sharper surrogate
    than a 10-step PGD ranks first (lif_bptt_ft: a tie at 63% between fast-sigmoid k = 5 and 10
    put k = 5 first in one run, and the quick suite's worst case came out 52.5% against 50.2%)."""
    parsed = family(path)
    return parsed[1] if parsed else 0.0


class Evaluation:
    """Runs suites on one process's shard of the sample set and keeps, per row, which of its
    images were fooled (1), not fooled (0) or not attacked (-1)."""

    def __init__(self, model, images, labels, indices, ctx, batch_size, published_attack,
                 partner=None, log=print, all_reduce=None, standalone=False, budget='full'):
        self.model, self.partner = model, partner
        self.standalone = standalone  # every attack on every image (else: the cascade)
        self.budget = budget  # plan.BUDGETS
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

    def run_group(self, suite, threat, eps_list, partner=False, largest_eps=None, sanity=False):
        """Every attack of ``suite`` at every ε of ``eps_list`` under ``threat`` (plan.py's three
        stages: published, the ranking sweep, the ranked attacks)."""
        for eps in eps_list:
            robust = self.clean_correct.clone()  # robust to every attack so far (this group)
            plan = suite_plan(suite, threat.threat, eps, self.model,
                              partner=self.partner if partner else None, sanity=sanity,
                              largest=eps == largest_eps, standalone=self.standalone,
                              budget=self.budget)
            for spec in plan.published:
                self._run_row(spec, spec.gradient, threat, eps, robust, sanity)
            ranked = self._sweep(plan.sweep, threat, eps, robust, sanity) if plan.sweep else []
            done = set()
            for spec in plan.attacks:
                gradient = resolve_gradient(spec.gradient, ranked)  # once per group: the sweep's
                key = (spec.attack, gradient, spec.loss, spec.steps, spec.restarts)
                if gradient is None or key in done:
                    continue  # a rank beyond the swept paths, or the same attack again
                done.add(key)
                self._run_row(spec, gradient, threat, eps, robust, sanity)
            self._log_worst(threat, eps, robust)
            if eps == largest_eps and not sanity and plan.adequacy_samples:
                self._adequacy(plan, ranked, threat, eps)

    def _sweep(self, sweep, threat, eps, robust, sanity):
        """Run the ranking sweep; return the swept paths, strongest (lowest accuracy) first."""
        subset = None
        if sweep.samples is not None:
            subset = self.indices < sweep.samples  # the first N images of the whole sample set
        accuracy = {}

        def run(path):
            spec = AttackSpec('pgd', path, 'ce', sweep.steps)
            accuracy[path] = self._run_row(spec, path, threat, eps, robust, sanity, subset)['accuracy']

        for path in sweep.paths:
            run(path)
        for path in sharpest_per_family(sweep.paths):
            shape, _ = family(path)
            cap = SURROGATES[shape].default_sharpness * sweep.sharpen_to * (1 + 1e-9)
            while True:
                sharper = next_sharpness(path, accuracy)
                if sharper is None or family(sharper)[1] > cap or sharper in accuracy:
                    break
                run(sharper)
                path = sharper
        return rank_paths(accuracy)

    def _run_row(self, spec, gradient, threat, eps, robust, sanity, subset=None):
        """One row: ``spec`` through ``gradient`` on the clean-correct images (``subset``: of
        those only the marked ones; ``spec.survivors``: only those no earlier row broke)."""
        start = time.perf_counter()
        if subset is None and spec.samples is not None:
            subset = self.indices < spec.samples  # the first N images of the whole sample set
        fooled = (~self.clean_correct).to(torch.int8)
        targets = robust if spec.survivors else self.clean_correct
        if subset is not None:
            targets = targets & subset
            fooled[~subset] = -1  # not attacked: outside the sweep's subset
        index = targets.nonzero()[:, 0]
        if spec.survivors:
            fooled[~robust & self.clean_correct] = -1  # not attacked: already broken
        partner_path = gradient[len('partner:'):] if gradient.startswith('partner:') else gradient
        target = Target(self.model, threat, eps, partner_path, self.published_attack, self.partner)
        for batch in self._batches(index):
            x, y = self._take(batch)
            x_adv = run_attack(spec, target, x, y)
            with torch.no_grad():
                wrong = (class_scores(self.model, x_adv.detach()).argmax(1) != y).cpu()
            fooled[batch] = wrong.to(torch.int8)
        before = int(robust.sum())
        robust &= fooled != 1
        if spec.survivors:  # the row of a survivors-only attack: the worst case after it
            not_fooled, attacked = int(robust.sum()), len(self.labels)
        else:
            not_fooled = int((fooled == 0).sum())
            attacked = len(self.labels) if subset is None else int(subset.sum())
        correct, n, still, newly, n_all = self.global_count(
            not_fooled, attacked, int(robust.sum()), before - int(robust.sum()), len(self.labels))
        row = {'attack': spec.attack, 'gradient': gradient, 'loss': spec.loss, 'steps': spec.steps,
               'restarts': spec.restarts, 'eps': eps_text(eps), 'threat': threat.threat,
               'clamp': threat.clamp, 'accuracy': correct / max(n, 1), 'n_samples': n,
               'scope': 'survivors' if spec.survivors else ('subset' if subset is not None else 'all'),
               'path_choice': spec.gradient if spec.gradient.startswith((BEST, ENSEMBLE_BEST, FAMILY_BEST, SHARPER)) else 'fixed',
               'label': PUBLISHED_LABEL if spec.published else 'adaptive',
               'worst_after': still / max(n_all, 1), 'newly_broken': newly,
               'sanity_eps': sanity, 'time_s': round(time.perf_counter() - start, 3)}
        self.rows.append(row)
        self.fooled.append(fooled)
        self.log(f"  {row_label(row):<58} eps={row['eps']:<7} {threat.threat:<8} "
                 f"clamp={str(threat.clamp).lower():<5} {100 * row['accuracy']:6.2f}% "
                 f"[{row['scope']}; worst {100 * row['worst_after']:.2f}%, +{newly} broken]  "
                 f"({row['time_s']:.0f}s)")
        return row

    def _adequacy(self, plan, ranked, threat, eps):
        """The binarization test (``adequacy.py``) of the group's strongest attack at the
        largest ε of the list, on the first ``plan.adequacy_samples`` images. The largest ε,
        not a fixed one: it is an ε the user asked about, and applicability barely depends on
        it (hosnn_bptt_ft, 40 images: 23 applicable at 8/255, 22 at 16/255). The strongest
        attack: the plan's first APGD-CE row whose path exists (else its first CE/CW PGD row),
        through its resolved path -- the binarized task has two classes, so DLR losses cannot
        run on it. Each rank tests its shard; the counts are summed into one check."""
        candidates = [s for s in plan.attacks if s.attack == 'apgd-ce'] + [
            s for s in plan.attacks if s.attack == 'pgd' and s.loss in ('ce', 'cw')]
        resolved = ((s, resolve_gradient(s.gradient, ranked)) for s in candidates)
        spec, gradient = next(((s, g) for s, g in resolved if g is not None), (None, None))
        if gradient is None:
            return  # the published suite: no adaptive attack to test
        spec = dataclasses.replace(spec, survivors=False)
        name = row_label({'attack': spec.attack, 'gradient': gradient, 'loss': spec.loss,
                          'steps': spec.steps, 'restarts': spec.restarts})

        def attack(binarized, x, labels, threat_, eps_):
            return run_attack(spec, Target(binarized, threat_, eps_, gradient), x, labels)

        chosen = (self.indices < plan.adequacy_samples).nonzero()[:, 0].to(self.labels.device)
        x = time_expand(self.images[chosen], self.n_steps)
        local = binarization_test(self.model, x, self.labels[chosen], threat, eps, attack,
                                  attack_name=name, batch_size=self.batch_size)
        n, applicable, broken, trivial = self.global_count(
            local['n_samples'], local['n_applicable'], local['n_broken'], local['n_trivial'])
        check = adequacy_check(n, applicable, broken, trivial, threat, eps, name, local['time_s'])
        self.checks.append(check)
        self.log(f"  adequacy (binarization test, {check['time_s']:.0f}s): {check['detail']}")

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
                with scores_through(self.model, path) as scores_fn, torch.enable_grad():
                    scores = scores_fn(threat.apply(x, delta))
                    (grad,) = torch.autograd.grad(LOSSES['ce'](scores, y).sum(), delta)
                zero += int((grad.flatten(1) == 0).all(1).sum())
            zero, n = self.global_count(zero, len(index))
            shares[path] = (zero, n)
        return shares

