"""The suites: which attacks run, in which order, through which gradient paths.

A row's gradient is a path name (``paths.py``), ``best:<n>`` (the n-th strongest path of its
group's PGD rows so far), ``none`` (black box) or ``partner:<path>`` (transfer). The published
attacks and their step counts come from ``attack.py``'s registry.
"""
import dataclasses

from layers.bptt import PUBLISHED
from robustness.attacks import PUBLISHED_PREFIX, published_names, published_steps
from robustness.paths import gradient_paths_for

SUITES = ('published', 'quick', 'full')
PUBLISHED_LABEL = 'published attack'


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of a suite (its name in ``attacks.ATTACKS``). ``survivors``: run only on
    images every earlier attack of the group failed on (its row is then the worst case after
    it)."""
    attack: str
    gradient: str
    loss: str
    steps: int
    restarts: int = 1
    survivors: bool = False

    @property
    def published(self):
        return self.attack.startswith(PUBLISHED_PREFIX)


def row_label(row):
    if row['attack'].startswith(PUBLISHED_PREFIX):
        return f"{row['attack'][len(PUBLISHED_PREFIX):].upper()} ({PUBLISHED_LABEL})"
    return f"{row['attack']} [{row['gradient']}, {row['loss']}, {row['steps']}x{row['restarts']}]"


def published_plan():
    """The published test (attack.py's registry, in its order): the published backward and loss."""
    return [AttackSpec(PUBLISHED_PREFIX + name, PUBLISHED, 'published', published_steps(name))
            for name in published_names()]


def suite_plan(suite, threat, eps, partner=False, sanity=False, largest=False, model=None):
    """The attacks of ``suite`` at one ε and threat model, in the order they run."""
    plan = published_plan() if threat == 'per-step' else []  # they perturb every time step
    if suite == 'published':
        return plan
    if suite == 'quick' or sanity:
        paths = gradient_paths_for(model, 'quick')
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
    plan += [AttackSpec('pgd', path, 'ce', 10) for path in gradient_paths_for(model, 'full')]  # 19 paths
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

