"""The suites: which attacks run, in which order, on which images, through which gradient paths.

A suite at one (ε, threat model) is a :class:`Plan`, run in three stages (AutoAttack's cascade):

1. ``published``: the published attacks (``attack.py``'s registry, with its step counts) on
   every image, standalone: their rows are the published numbers.
2. ``sweep`` (:class:`Sweep`): a cheap PGD-CE through every gradient path of the suite, on a
   subset of the images, standalone: it ranks the paths. Each surrogate family is sharpened
   further (k doubled) while PGD keeps getting stronger, so the strongest path cannot lie just
   beyond the sharpnesses the suite happens to list (an outside reviewer beat the old fixed
   sweep, which stopped at fast-sigmoid k = 5, with k = 10 and 20).
3. ``attacks``: the expensive attacks, through paths named by rank -- ``best:<n>`` (the n-th
   strongest swept path), ``ensemble:best:<n>`` (the mean gradient of the n strongest,
   ``paths.py``), ``ensemble:family:best:<n>`` (the ensemble of the n-th strongest path's
   surrogate family at 2x, 4x and 8x its default sharpness) or ``sharper:<m>:best:<n>`` (the n-th strongest at m times its sharpness: a
   10-step PGD ranks sharp surrogates too low -- their gradient is sparse until the perturbation
   grows -- while a 100-step APGD is often strongest through them) -- resolved ONCE from the sweep, so every rank gets its own attacks and no row
   repeats another. By default they run only on the images no earlier attack broke (their row
   is then the worst case after them); ``standalone`` runs each on every image instead, for a
   per-attack table. ``none`` = black box; ``partner:<path>`` = transfer from the partner.
"""
import dataclasses

from layers.gradients import PUBLISHED

from layers.surrogate import SURROGATES
from robustness.attacks import PUBLISHED_PREFIX, published_names, published_steps
from robustness.paths import AUTOGRAD, ensemble_name, gradient_paths_for, is_spiking, sharpened

SUITES = ('published', 'quick', 'full')
# 'smoke': every attack but the published ones at a tenth of its steps -- a check that the
# pipeline runs on a model, in seconds, not a robustness number (robustness.evaluate's budget=).
BUDGETS = ('full', 'smoke')
PUBLISHED_LABEL = 'published attack'
BEST = 'best:'
ENSEMBLE_BEST = 'ensemble:best:'
SHARPER = 'sharper:'  # 'sharper:<m>:best:<n>': the n-th strongest path at m x its sharpness
FAMILY_BEST = 'ensemble:family:best:'  # the ensemble of the n-th strongest path's family at SHARP_FACTORS
# The full suite attacks through these families at these multiples of their default sharpness
# whatever the sweep ranks (plan.suite_plan says why).
SHARP_FACTORS = (2, 4, 8)
# ... and these paths, whatever the sweep ranks: the families an outside reviewer's APGD found
# strongest on the zoo, at 2x and 4x their default sharpness (k = 5 and 10). Which of the two
# families a 10-step PGD on 150 images ranks first is close to a coin toss on the zoo, and the
# APGD rows through the other family's k = 5 still broke 10-17 images of 1 000 (lif_bptt_ft).
SHARP_FIXED = (('fast-sigmoid', 2), ('arctan', 2), ('fast-sigmoid', 4), ('arctan', 4))
# The checks' rows (PGD-7 vs PGD-100, Square) run on the first N images: enough to tell, cheap.
CHECK_SAMPLES = {'quick': 100, 'full': 200}
SQUARE_SAMPLES = 50


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack of a suite (its name in ``attacks.ATTACKS``). ``survivors``: run only on
    images every earlier attack of the group failed on (its row is then the worst case after
    it). ``samples``: only on the first N images of the sample set (None: all) -- for checks
    whose answer does not need every image (PGD-7 vs PGD-100, the black box)."""
    attack: str
    gradient: str
    loss: str
    steps: int
    restarts: int = 1
    survivors: bool = False
    samples: int = None

    @property
    def published(self):
        return self.attack.startswith(PUBLISHED_PREFIX)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The ranking sweep: PGD-CE with ``steps`` steps through each of ``paths`` on the first
    ``samples`` images (None: all). Then, per surrogate family of ``paths``, the sharpness is
    doubled while the sweep's accuracy does not rise, up to ``sharpen_to`` x the family's
    default sharpness (1: no sharpening)."""
    paths: tuple
    steps: int = 10
    samples: int = None
    sharpen_to: float = 1


@dataclasses.dataclass(frozen=True)
class Plan:
    """``adequacy_samples``: the binarization test (``adequacy.py``) of the strongest attack
    runs on the first N images at the largest ε (None: no test). It costs about one attack row
    on N images, so the quick suite tests fewer."""
    published: tuple = ()
    sweep: Sweep = None
    attacks: tuple = ()
    adequacy_samples: int = None


def row_label(row):
    if row['attack'].startswith(PUBLISHED_PREFIX):
        return f"{row['attack'][len(PUBLISHED_PREFIX):].upper()} ({PUBLISHED_LABEL})"
    return f"{row['attack']} [{row['gradient']}, {row['loss']}, {row['steps']}x{row['restarts']}]"


def published_plan():
    """The published test (attack.py's registry, in its order): the published backward and loss."""
    return tuple(AttackSpec(PUBLISHED_PREFIX + name, PUBLISHED, 'published', published_steps(name))
                 for name in published_names())


def suite_plan(suite, threat, eps, model, partner=None, sanity=False, largest=False,
               standalone=False, budget='full'):
    """The :class:`Plan` of ``suite`` at one ε and threat model for ``model`` (``partner``: the
    transfer source or None). ``sanity``: the reduced plan of the 64/255 masking check;
    ``largest``: this is the largest ε of the list (the long checks run there only);
    ``budget``: ``'full'``, or ``'smoke'`` (:func:`smoke_plan`)."""
    if suite not in SUITES:
        raise ValueError(f"suite {suite!r}: choose one of {', '.join(SUITES)}")
    if budget not in BUDGETS:
        raise ValueError(f"budget {budget!r}: choose one of {', '.join(BUDGETS)}")
    plan = _suite_plan(suite, threat, eps, model, partner, sanity, largest, standalone)
    return smoke_plan(plan) if budget == 'smoke' else plan


def smoke_plan(plan):
    """``plan`` with every attack but the published ones at a tenth of its steps (at least 2;
    Square's queries too) and a 3-step ranking sweep."""
    attacks = tuple(dataclasses.replace(spec, steps=max(2, spec.steps // 10)) for spec in plan.attacks)
    sweep = dataclasses.replace(plan.sweep, steps=3) if plan.sweep is not None else None
    return dataclasses.replace(plan, sweep=sweep, attacks=attacks)


def _suite_plan(suite, threat, eps, model, partner, sanity, largest, standalone):
    published = published_plan() if threat == 'per-step' else ()  # they perturb every time step
    if suite == 'published':
        return Plan(published)
    cascade = not standalone
    partner_path = None
    if partner is not None:
        partner_path = 'partner:' + ('bptt:published:5' if is_spiking(partner) else AUTOGRAD)
    if suite == 'quick' or sanity:
        # Budget: 3 min for 1 000 Fashion-MNIST images on 2 idle CPU cores (README).
        sweep = Sweep(tuple(gradient_paths_for(model, 'quick')), steps=10,
                      samples=None if standalone else 100, sharpen_to=8)
        attacks = [AttackSpec('apgd-ce', 'best:1', 'ce', 50, survivors=cascade),
                   AttackSpec('apgd-ce', 'ensemble:best:2', 'ce', 20, survivors=cascade),
                   AttackSpec('apgd-dlr', 'best:1', 'dlr', 40, survivors=cascade),
                   AttackSpec('pgd', 'best:2', 'cw', 20, survivors=cascade)]
        if largest and not sanity:  # the PGD-7/PGD-100 check compares standalone accuracies
            attacks += [AttackSpec('pgd', 'best:1', 'ce', 7, samples=CHECK_SAMPLES['quick']),
                        AttackSpec('pgd', 'best:1', 'ce', 100, samples=CHECK_SAMPLES['quick'])]
        if partner_path and not sanity:
            attacks.append(AttackSpec('transfer-pgd', partner_path, 'ce', 20, survivors=cascade))
        return Plan(published, sweep, tuple(attacks), adequacy_samples=100)
    # full (budget: 10 min for 1 000 Fashion-MNIST images on 2 idle CPU cores, README): every
    # surrogate shape at three sharpnesses, each family sharpened further while it helps (the
    # sweep, on 150 images); then, on the images no earlier attack broke, APGD-CE with 100
    # iterations through the three strongest paths, the strongest at 2x (with a restart) and 4x
    # its sharpness, and fast-sigmoid and arctan at k = 5 and 10 whatever the sweep says (a 10-step PGD
    # ranks sharp surrogates too low: their gradient is sparse until the perturbation grows, yet
    # an outside reviewer's APGD through fast-sigmoid k = 10 and 20 beat the ranked rows on the
    # zoo); APGD-CE on the ensemble of the strongest family at 2x, 4x and 8x its default
    # sharpness (APGD's adaptive step on the mean gradient of several sharpnesses: our
    # equivalent of SA-PGD's stable adaptive step on an adaptive-sharpness surrogate); APGD-DLR
    # (scale-free, with a restart) through the strongest path; CW; transfer; PGD-7 vs PGD-100
    # and Square (5 000 queries) on the first images at the largest eps (the masking checks).
    # Left out for the time budget, measured on lif_bptt_ft and hosnn_bptt_ft (1 000 images,
    # 8/255): APGD-T (broke no image the other rows had not, in four runs), CW and PGD transfer
    # from the partner's other paths (none), DLR through every path (one image in 200).
    sweep = Sweep(tuple(gradient_paths_for(model, 'full')), steps=10,
                  samples=None if standalone else 150, sharpen_to=16)
    # The strongest path at 2x first: APGD-100 is strongest through a sharper surrogate than the
    # one PGD-10 ranks first (lif_bptt_ft, 1 000 images: fast-sigmoid k = 10 broke 59 images
    # that k = 5 left), and the first row costs most (it runs on the most images).
    attacks = [AttackSpec('apgd-ce', 'sharper:2:best:1', 'ce', 100, 2, survivors=cascade),
               AttackSpec('apgd-ce', 'best:1', 'ce', 100, survivors=cascade),
               AttackSpec('apgd-ce', 'sharper:4:best:1', 'ce', 100, survivors=cascade),
               AttackSpec('apgd-ce', 'best:2', 'ce', 100, survivors=cascade),
               AttackSpec('apgd-ce', 'best:3', 'ce', 100, survivors=cascade),
               *(AttackSpec('apgd-ce', path, 'ce', 100, survivors=cascade)
                 for path in sharp_paths(model)),
               AttackSpec('apgd-ce', FAMILY_BEST + '1', 'ce', 50, survivors=cascade),
               AttackSpec('apgd-dlr', 'best:1', 'dlr', 100, 2, survivors=cascade),
               AttackSpec('pgd', 'best:1', 'cw', 20, survivors=cascade)]
    if largest:
        attacks += [AttackSpec('pgd', 'best:1', 'ce', 7, samples=CHECK_SAMPLES['full']),
                    AttackSpec('pgd', 'best:1', 'ce', 100, samples=CHECK_SAMPLES['full'])]
    if partner_path:
        attacks.append(AttackSpec('transfer-pgd', partner_path, 'ce', 20, survivors=cascade))
    spiking = is_spiking(model)
    if not spiking:
        # A model without spikes (the ANN twin) has one gradient path and cheap forwards: the
        # rest of AutoAttack's standard set, APGD-T through it and Square on every survivor,
        # costs little, and the ANN is the reference the spiking networks are compared with.
        attacks.append(AttackSpec('apgd-t', 'best:1', 'dlr-targeted', 100, survivors=cascade))
    if largest:  # 5000 queries per surviving image of the first SQUARE_SAMPLES
        attacks.append(AttackSpec('square', 'none', 'margin', 5000, survivors=True,
                                  samples=SQUARE_SAMPLES if spiking else None))
    return Plan(published, sweep, tuple(attacks), adequacy_samples=200)


def resolve_gradient(gradient, ranked):
    """A row's gradient with its rank resolved against ``ranked`` (the swept paths, strongest
    first): ``best:<n>`` -> the n-th path, ``ensemble:best:<n>`` -> the ensemble of the n
    strongest (fewer if fewer were swept), ``sharper:<m>:best:<n>`` -> the n-th path at m times
    its sharpness. None when the rank does not exist, an ensemble would have one member (the row
    would repeat another) or the n-th path has no sharpness (the published backward)."""
    if gradient.startswith(SHARPER):
        factor, rank = gradient[len(SHARPER):].split(':', 1)
        path = resolve_gradient(rank, ranked)
        parsed = family(path) if path else None
        return sharpened(parsed[0], parsed[1] * float(factor)) if parsed else None
    if gradient.startswith(FAMILY_BEST):
        path = resolve_gradient(BEST + gradient[len(FAMILY_BEST):], ranked)
        parsed = family(path) if path else None
        if not parsed:
            return None  # the published backward has no family
        default = SURROGATES[parsed[0]].default_sharpness
        return ensemble_name([sharpened(parsed[0], default * m) for m in SHARP_FACTORS])
    if gradient.startswith(ENSEMBLE_BEST):
        members = ranked[:int(gradient[len(ENSEMBLE_BEST):])]
        return ensemble_name(members) if len(members) > 1 else None
    if gradient.startswith(BEST):
        n = int(gradient[len(BEST):])
        return ranked[n - 1] if n <= len(ranked) else None
    return gradient


def sharp_paths(model):
    """The fixed sharp paths of the full suite (:data:`SHARP_FIXED`; none for a model without
    spiking layers). A row through one of them that repeats a ranked row is skipped."""
    if not is_spiking(model):
        return ()
    return tuple(sharpened(shape, SURROGATES[shape].default_sharpness * m)
                 for shape, m in SHARP_FIXED)


def family(path):
    """``bptt:<shape>:<k>`` -> ``(shape, k)``; None for any other path."""
    parts = path.split(':')
    if len(parts) == 3 and parts[0] == 'bptt' and parts[1] in SURROGATES:
        return parts[1], float(parts[2])
    return None


def next_sharpness(path, accuracy):
    """The next path of the adaptive-sharpness sweep after ``path`` (its family's sharpest so
    far), or None. ``accuracy``: the sweep's accuracies so far, by path. Doubling stops once two
    doublings in a row were weaker than the family's best: one weaker row may be the noise of a
    short PGD on a few hundred images (a sharp surrogate that a 10-step PGD ranks low can still
    be the strongest for a 100-step APGD: fast-sigmoid k = 10 and 20 were, on the zoo)."""
    shape, k = family(path)
    tried = {family(p)[1]: a for p, a in accuracy.items() if family(p) and family(p)[0] == shape}
    best = min(tried.values())
    if all(k2 in tried and tried[k2] > best for k2 in (k, k / 2)):
        return None  # two sharper paths in a row made PGD weaker: stop
    return sharpened(shape, 2 * k)


def sharpest_per_family(paths):
    """The sharpest swept path of each surrogate family, in sweep order."""
    sharpest = {}
    for path in paths:
        parsed = family(path)
        if parsed and (parsed[0] not in sharpest or parsed[1] > family(sharpest[parsed[0]])[1]):
            sharpest[parsed[0]] = path
    return list(sharpest.values())
