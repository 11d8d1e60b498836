"""The per-sample runner: class :class:`Evaluation` runs a suite's rows on one process's shard and
keeps, per row, which images were fooled.

Verification. Whatever an attack returns is projected onto the threat model's ε-ball (a no-op
for a correct attack) and classified again by the plain model under ``no_grad``: an image is
*fooled* only if that prediction is wrong. Rows, the worst case and per_sample.npz all come from
these verified predictions.
"""
import time

import torch

from layers import time_expand
from robustness.attacks import Target, run_attack
from robustness.losses import LOSSES
from robustness.paths import scores_through
from robustness.plan import PUBLISHED_LABEL, row_label, suite_plan
from robustness.threats import class_scores, eps_text


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
                              sanity=sanity, largest=eps == largest_eps, model=self.model)
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
        target = Target(self.model, threat, eps, partner_path, self.published_attack, self.partner)
        for batch in self._batches(index):
            x, y = self._take(batch)
            x_adv = run_attack(spec, target, x, y)
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
                with scores_through(self.model, path) as scores_fn, torch.enable_grad():
                    scores = scores_fn(threat.apply(x, delta))
                    (grad,) = torch.autograd.grad(LOSSES['ce'](scores, y).sum(), delta)
                zero += int((grad.flatten(1) == 0).all(1).sum())
            zero, n = self.global_count(zero, len(index))
            shares[path] = (zero, n)
        return shares

