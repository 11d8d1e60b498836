"""robustness/: threat models (per-step / static, clamped or not), the torchattacks wrapper, our
PGD, the per-sample bookkeeping, the worst case and the sanity checks, on a tiny float64
network."""
import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from robustness import attacks, checks, evaluation, losses, paths, plan, report, suite, threats
from robustness.threats import ThreatModel
from runtime.distributed import DistContext
from runtime.formatting import eps_text
from layers import predict, time_expand
from conftest import TWO_CHANNEL_MEAN, TWO_CHANNEL_STD, two_channel_network

N_STEPS, N_CLASS = 5, 4
MEAN, STD = TWO_CHANNEL_MEAN, TWO_CHANNEL_STD  # two channels with different statistics


def tiny_network(model='LIF', seed=0, channels=2):
    return two_channel_network(model, seed, channels, N_STEPS, N_CLASS)


def pixel_images(n=12, seed=0, channels=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 8, 8, generator=gen, dtype=torch.float64)


def normalise(pixels):
    mean = torch.tensor(MEAN, dtype=pixels.dtype).view(1, -1, 1, 1)
    std = torch.tensor(STD, dtype=pixels.dtype).view(1, -1, 1, 1)
    return (pixels - mean) / std


def expand(images):
    return time_expand(images, N_STEPS)


def threat_model(threat='per-step', clamp=False):
    return ThreatModel(threat, clamp, MEAN, STD, N_STEPS)


@pytest.fixture(scope='module')
def data():
    model, network_cfg = tiny_network()
    images = normalise(pixel_images())
    with torch.no_grad():
        labels = predict(model(expand(images), False)[0])  # clean-correct by construction
    labels[:3] = (labels[:3] + 1) % N_CLASS  # ... except three images
    return model, network_cfg, images, labels


def test_threat_model_folds_time_into_channels_and_back():
    threat = threat_model('per-step')
    x = torch.randn(3, 2, 8, 8, N_STEPS, dtype=torch.float64)
    image = threat.to_image(x)
    assert image.shape == (3, 2 * N_STEPS, 8, 8)
    # channel c * T + t of the image is time step t of channel c, in pixels
    assert torch.allclose(image[:, 1 * N_STEPS + 3], x[:, 1, :, :, 3] * STD[1] + MEAN[1])
    torch.testing.assert_close(threat.from_image(image), x)
    delta = torch.randn_like(image)
    model_delta = threat.image_delta_to_model(delta)
    assert torch.allclose(model_delta[:, 0, :, :, 2], delta[:, 2] / STD[0])
    static = threat_model('static')
    x_static = expand(torch.randn(3, 2, 8, 8, dtype=torch.float64))
    assert static.to_image(x_static).shape == (3, 2, 8, 8)
    torch.testing.assert_close(static.from_image(static.to_image(x_static)), x_static)


@pytest.mark.parametrize('clamp', [False, True])
def test_image_wrapper_gives_the_model_scores(data, clamp):
    model, _, images, _ = data
    x = expand(images)
    eps = Fraction(8, 255)
    for threat in (threat_model('per-step', clamp), threat_model('static', clamp)):
        wrapper = attacks.ImageModel(lambda x_: threats.class_scores(model, x_), threat, eps, x)
        z = wrapper.encode(x)
        assert z.min() >= 0 and z.max() <= 1  # torchattacks' clamp to [0, 1] never binds
        with torch.no_grad():
            torch.testing.assert_close(wrapper(z), threats.class_scores(model, x))
        if not clamp:  # the whole ball around a valid image stays in [0, 1]
            assert ((z - wrapper.eps).min() >= -1e-12) and ((z + wrapper.eps).max() <= 1 + 1e-12)


def perturbation_checks(x, x_adv, threat, eps):
    delta = x_adv - x
    bound = torch.tensor([float(eps) / s for s in STD], dtype=x.dtype).view(1, -1, 1, 1, 1)
    assert (delta.abs() <= bound * (1 + 1e-9)).all()
    if threat.static:
        assert torch.equal(delta, delta[..., :1].expand_as(delta))  # the same on every step
    if threat.clamp:
        pixels = x_adv * torch.tensor(STD, dtype=x.dtype).view(1, -1, 1, 1, 1) + \
            torch.tensor(MEAN, dtype=x.dtype).view(1, -1, 1, 1, 1)
        assert pixels.min() >= -1e-9 and pixels.max() <= 1 + 1e-9
    return delta


ATTACKS = {
    'pgd-ce': lambda m, x, y, t, e: _with_path(m, 'published', attacks.pgd, x, y, t, e, 'ce',
                                               steps=5, restarts=2),
    'pgd-cw-bptt': lambda m, x, y, t, e: _with_path(m, 'bptt:sigmoid:5', attacks.pgd, x, y, t, e,
                                                    'cw', 5),
    'apgd-dlr': lambda m, x, y, t, e: _with_path(m, 'published', attacks.torchattacks_attack,
                                                 attacks._apgd('dlr')(5), x, y, t, e),
    'apgd-t': lambda m, x, y, t, e: _with_path(m, 'published', attacks.torchattacks_attack,
                                               attacks._apgdt(3), x, y, t, e),
    'square': lambda m, x, y, t, e: _with_path(m, 'published', attacks.torchattacks_attack,
                                               attacks._square(30), x, y, t, e),
}


def _with_path(model, path, fn, *args, **kwargs):
    """``fn(scores, *args)`` with the class scores of ``model`` through gradient path ``path``;
    for torchattacks_attack the scores come after its ``make`` argument."""
    with paths.scores_through(model, path) as scores:
        if fn is attacks.torchattacks_attack:
            return fn(args[0], scores, *args[1:], **kwargs)
        return fn(scores, *args, **kwargs)


@pytest.mark.parametrize('name', list(ATTACKS))
@pytest.mark.parametrize('threat_name,clamp', [('per-step', False), ('static', False),
                                               ('static', True), ('per-step', True)])
def test_attacks_stay_in_the_threat_model(data, name, threat_name, clamp):
    model, _, images, labels = data
    x = expand(images)
    threat = threat_model(threat_name, clamp)
    eps = Fraction(32, 255)
    x_adv = ATTACKS[name](model, x, labels, threat, eps)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    delta = perturbation_checks(x, x_adv, threat, eps)
    with torch.no_grad():
        newly_wrong = (predict(model(x_adv, False)[0]) != labels) & \
            (predict(model(x, False)[0]) == labels)
    assert (delta[newly_wrong].flatten(1).abs().amax(1) > 0).all()
    if name.startswith('pgd'):  # ours returns its last iterate for the images it did not fool
        assert (delta.flatten(1).abs().amax(1) > 0).all()


def test_pgd_with_a_large_eps_fools_and_its_fooled_images_are_wrong(data):
    model, _, images, labels = data
    x = expand(images)
    threat = threat_model('per-step')
    x_adv = _with_path(model, 'published', attacks.pgd, x, labels, threat, Fraction(128, 255), 'cw',
                       steps=20, restarts=2)
    with torch.no_grad():
        clean_wrong = predict(model(x, False)[0]) != labels
        adv_wrong = predict(model(x_adv, False)[0]) != labels
    assert adv_wrong.sum() > clean_wrong.sum()  # an attack never helps, and this one works


def test_margin_and_dlr_losses_are_positive_exactly_when_fooled():
    scores = torch.tensor([[3.0, 1.0, 0.5, 0.0], [1.0, 2.0, 0.0, -1.0]])
    labels = torch.tensor([0, 0])
    margin = losses.margin_loss(scores, labels)
    assert margin.tolist() == [-2.0, 1.0]
    dlr = losses.dlr_loss(scores, labels)
    assert dlr[0] < 0 < dlr[1]
    assert dlr[1] == pytest.approx(1.0 / (2.0 - 0.0))


def run_small(data, monkeypatch=None, suite='quick', threats=('per-step',), clamps=(False,),
              eps_list=(Fraction(8, 255),), sanity_eps=False):
    model, network_cfg, images, labels = data
    return evaluation.run_evaluation(
        model, images, labels, torch.arange(len(labels)), DistContext(), suite=suite,
        eps_list=list(eps_list), threats=list(threats), clamps=list(clamps), mean=MEAN, std=STD,
        batch_size=5, published_attack=evaluation.published_attack_fn(network_cfg),
        sanity_eps=sanity_eps, log=lambda message: None)


def test_fooled_means_wrong_on_the_adversarial_example(data, monkeypatch):
    """Every per-sample flag is the verified prediction on what the attack returned."""
    model = data[0]
    seen = []
    original = suite.run_attack

    def recording(spec, target, x, labels):
        x_adv = original(spec, target, x, labels)
        seen.append((labels, x_adv))
        return x_adv
    monkeypatch.setattr(suite, 'run_attack', recording)
    result, table = run_small(data, suite='published')
    assert seen
    fooled = table['fooled']
    # rows run in order, each over the clean-correct images in batches of 5
    clean_correct = np.flatnonzero(table['clean_correct'])
    batches = [clean_correct[i:i + 5] for i in range(0, len(clean_correct), 5)]
    for row_index in range(len(result['rows'])):
        for batch in batches:
            labels, x_adv = seen.pop(0)
            with torch.no_grad():
                wrong = (predict(model(x_adv, False)[0]) != labels).numpy()
            assert (fooled[row_index, batch] == 1).tolist() == wrong.tolist()
    assert (fooled[:, ~table['clean_correct']] == 1).all()  # misclassified clean = fooled


SUITE_PLAN = plan.suite_plan


def small_plan(suite_name, threat, eps, model, **kwargs):
    """Every kind of entry of a real plan, with few steps: published, a path sweep, the
    strongest path, a survivors-only black box."""
    Spec = plan.AttackSpec
    published = SUITE_PLAN('published', threat, eps, model).published[2:3]  # the published PGD
    sweep = plan.Sweep(('published', 'bptt:sigmoid:5'), steps=3)
    attacks = (Spec('apgd-ce', 'best:1', 'ce', 3), Spec('apgd-dlr', 'best:3', 'dlr', 3),
               Spec('square', 'none', 'margin', 20, survivors=True))
    return plan.Plan(published, sweep, attacks)


def test_worst_case_is_below_every_row_and_matches_the_per_sample_table(data, monkeypatch):
    monkeypatch.setattr(suite, 'suite_plan', small_plan)
    result, table = run_small(data, suite='quick', threats=('per-step', 'static'),
                              eps_list=(Fraction(8, 255), Fraction(32, 255)))
    # 'best:3' of two ranked paths is skipped; 'best:1' is one of the two
    assert not any(r['attack'] == 'apgd-dlr' for r in result['rows'])
    assert all(r['gradient'] in ('published', 'bptt:sigmoid:5') and r['path_choice'] == 'best:1'
               for r in result['rows'] if r['attack'] == 'apgd-ce')
    square = [r for r in result['rows'] if r['attack'] == 'square']
    assert square and all(r['scope'] == 'survivors' for r in square)
    assert {(e['eps'], e['threat']) for e in result['worst_case']} == {
        ('8/255', 'per-step'), ('32/255', 'per-step'), ('8/255', 'static'), ('32/255', 'static')}
    for entry in result['worst_case']:
        rows = [r for r in result['rows'] if (r['eps'], r['threat'], r['clamp']) ==
                (entry['eps'], entry['threat'], entry['clamp'])]
        assert rows and all(entry['accuracy'] <= r['accuracy'] + 1e-12 for r in rows)
        assert sum(entry['broken_first'].values()) == round((1 - entry['accuracy']) * entry['n_samples'])
        assert entry['broken_first']['clean'] == 3
    static_rows = [r for r in result['rows'] if r['threat'] == 'static']
    assert static_rows and not any(r['label'] == report.PUBLISHED_LABEL for r in static_rows)
    published = [r for r in result['rows'] if r['attack'].startswith('published-')]
    assert published and all(r['label'] == report.PUBLISHED_LABEL and r['gradient'] == 'published'
                             for r in published)
    arrays = report.per_sample_arrays(result['rows'], table, result['worst_case'])
    for i, group in enumerate(arrays['worst_case_groups']):
        entry = result['worst_case'][i]
        assert json.loads(group) == {k: entry[k] for k in ('eps', 'threat', 'clamp')}
        assert arrays['worst_case_robust'][i].mean() == pytest.approx(entry['accuracy'])
    assert arrays['fooled'].shape == (len(result['rows']), 12)


def adequacy_plan(suite_name, threat, eps, model, **kwargs):
    Spec = plan.AttackSpec
    return plan.Plan((), plan.Sweep(('bptt:sigmoid:5', 'bptt:fast-sigmoid:2.5'), steps=3),
                     (Spec('apgd-dlr', 'best:1', 'dlr', 5, survivors=True),
                      Spec('apgd-ce', 'best:1', 'ce', 20, survivors=True)), adequacy_samples=12)


@pytest.mark.parametrize('attack_works', [True, False])
def test_attack_adequacy_runs_the_strongest_attack_on_the_binarized_model(data, monkeypatch,
                                                                          attack_works):
    """The binarization test runs once per group, at the largest eps, with the plan's APGD-CE
    row (not its DLR row: two classes) through its ranked path; an attack that returns its input
    fails it as 'attack inadequate', in the sanity list and in the console."""
    from robustness.adequacy import BinarizedModel
    monkeypatch.setattr(suite, 'suite_plan', adequacy_plan)
    original = suite.run_attack
    used = []

    def attack(spec, target, x, labels):
        if isinstance(target.model, BinarizedModel):
            used.append((spec.attack, spec.loss, target.gradient))
            if not attack_works:
                return x
        return original(spec, target, x, labels)
    monkeypatch.setattr(suite, 'run_attack', attack)
    model, network_cfg, images, labels = data
    logged = []
    result, _ = evaluation.run_evaluation(
        model, images, labels, torch.arange(len(labels)), DistContext(), suite='quick',
        eps_list=[Fraction(8, 255), Fraction(32, 255)], threats=['per-step'], clamps=[False],
        mean=MEAN, std=STD, batch_size=5, published_attack=None, sanity_eps=False,
        log=logged.append)
    checks = [c for c in result['sanity'] if c['check'].startswith('attack adequacy')]
    assert len(checks) == 1 and checks[0]['eps'] == '32/255' and checks[0]['n_samples'] == 12
    assert {u[:2] for u in used} == {('apgd-ce', 'ce')}
    assert {u[2] for u in used} <= {'bptt:sigmoid:5', 'bptt:fast-sigmoid:2.5'}
    check = checks[0]
    assert check['n_applicable'] > 0, 'the tiny network must give the test something to check'
    assert check['passed'] is attack_works
    assert check['value'] == check['n_broken'] / check['n_applicable']
    assert check['detail'].endswith('attack inadequate') is not attack_works
    verdict = 'PASS' if attack_works else 'FAIL'
    assert any(line.startswith(f'  [{verdict}] attack adequacy') for line in logged)


def test_gather_restores_the_sample_order():
    """Two ranks' shards (rank r holds samples r, r + 2, ...) -> one table in sample order."""
    class Shard:
        def __init__(self, indices):
            self.indices = torch.tensor(indices)
            self.labels = torch.tensor(indices) % 3
            self.clean_correct = torch.tensor(indices) % 2 == 0
            self.fooled = [(torch.tensor(indices) % 2).to(torch.int8)]
    ranks = [Shard([0, 2, 4]), Shard([1, 3])]
    gathered = []

    def all_gather(local):  # what distributed.all_gather_object returns: one object per rank
        gathered.append(local)
        return [local] + [{'indices': r.indices.numpy(), 'labels': r.labels.numpy(),
                           'clean_correct': r.clean_correct.numpy(),
                           'fooled': torch.stack(r.fooled).numpy()} for r in ranks[1:]]
    table = checks.gather(ranks[0], all_gather)
    assert gathered[0]['indices'].tolist() == [0, 2, 4]
    assert table['sample_index'].tolist() == [0, 1, 2, 3, 4]
    assert table['labels'].tolist() == [0, 1, 2, 0, 1]
    assert table['clean_correct'].tolist() == [True, False, True, False, True]
    assert table['fooled'][0].tolist() == [0, 1, 0, 1, 0]


def test_sanity_checks_flag_masking_and_a_weak_long_attack():
    rows = [
        {'attack': 'pgd', 'gradient': 'published', 'loss': 'ce', 'steps': 7, 'restarts': 1,
         'eps': '8/255', 'threat': 'per-step', 'clamp': False, 'accuracy': 0.40, 'n_samples': 100},
        {'attack': 'pgd', 'gradient': 'published', 'loss': 'ce', 'steps': 100, 'restarts': 1,
         'eps': '8/255', 'threat': 'per-step', 'clamp': False, 'accuracy': 0.45, 'n_samples': 100},
    ]
    worst = [{'eps': '64/255', 'threat': 'per-step', 'clamp': False, 'accuracy': 0.2,
              'n_samples': 100, 'broken_first': {}}]
    verdicts = checks.sanity_checks(rows, worst, {('per-step', False, 'published'): (30, 100)})
    masking = next(c for c in verdicts if c['check'].startswith('worst case'))
    assert masking['passed'] is False and 'gradient masking suspected' in masking['detail']
    assert next(c for c in verdicts if c['check'].startswith('PGD-100'))['passed'] is False
    assert next(c for c in verdicts if c['check'].startswith('black-box'))['passed'] is None
    assert next(c for c in verdicts if 'zero input gradients' in c['check'])['passed'] is False
    assert all(set(c) == {'check', 'passed', 'detail'} for c in verdicts)


def test_eps_parsing_is_exact_and_never_evaluates():
    assert threats.parse_eps('8/255') == Fraction(8, 255)
    assert eps_text(threats.parse_eps(' 0.5 ')) == '1/2'
    assert eps_text(threats.parse_eps(8 / 255)) == '8/255'
    for bad in ('__import__("os")', '1/0', '-1/255', 'eight'):
        with pytest.raises(ValueError):
            threats.parse_eps(bad)


@pytest.mark.parametrize('name', ['pgd', 'apgd-ce', 'apgd-dlr', 'apgd-t', 'published-pgd'])
@pytest.mark.parametrize('clamped', [False, True])
def test_registry_entries_respect_eps_and_bounds_and_never_unfool(data, name, clamped):
    """robustness.attacks.ATTACKS, as a suite row calls them: the perturbation stays in the
    threat model, and no attack turns a misclassified image into a correct one (APGD keeps
    the clean input of an image it does not fool, our PGD its last iterate in the ball)."""
    model, network_cfg, images, labels = data
    x = expand(images)
    threat = threat_model('per-step', clamped)
    eps = Fraction(32, 255)
    spec = plan.AttackSpec(name, 'bptt:sigmoid:5' if not name.startswith('published') else
                           'published', 'ce' if name != 'apgd-dlr' else 'dlr', 3)
    target = attacks.Target(model, threat, eps, spec.gradient,
                            evaluation.published_attack_fn(network_cfg))
    x_adv = attacks.run_attack(spec, target, x, labels)
    assert x_adv.shape == x.shape
    if not name.startswith('published'):  # the published ones use the scalar YAML std
        perturbation_checks(x, x_adv, threat, eps)
    with torch.no_grad():
        clean = predict(model(x, False)[0]) == labels
        adv = predict(model(x_adv, False)[0]) == labels
    assert (adv <= clean).all()


def test_unknown_attack_is_named():
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        attacks.run_attack(plan.AttackSpec('nope', 'published', 'ce', 1), None, None, None)


def test_ranking_is_resolved_once_from_the_sweep_and_no_row_repeats(data, monkeypatch):
    """best:1 / best:2 name the sweep's two strongest paths, whatever later rows (CW) score;
    each rank gets its own attacks; a rank or an attack that would repeat a row is skipped."""
    Spec = plan.AttackSpec
    sweep_paths = ('published', 'bptt:sigmoid:5', 'bptt:fast-sigmoid:2.5')

    def ranked_plan(suite_name, threat, eps, model, **kwargs):
        return plan.Plan((), plan.Sweep(sweep_paths, steps=3),
                         (Spec('pgd', 'best:1', 'cw', 3, survivors=True),
                          Spec('pgd', 'best:2', 'cw', 3, survivors=True),
                          Spec('apgd-ce', 'best:1', 'ce', 3), Spec('apgd-ce', 'best:2', 'ce', 3),
                          Spec('apgd-ce', 'best:1', 'ce', 3),  # the same attack again
                          Spec('apgd-ce', 'best:4', 'ce', 3),  # beyond the three paths
                          Spec('apgd-ce', 'ensemble:best:2', 'ce', 3)))
    monkeypatch.setattr(suite, 'suite_plan', ranked_plan)
    result, _ = run_small(data, eps_list=(Fraction(16, 255),))
    rows = result['rows']
    swept = {r['gradient']: r['accuracy'] for r in rows[:3]}
    assert list(swept) == list(sweep_paths) and all(r['scope'] == 'all' for r in rows[:3])
    ranked = suite.rank_paths(swept)  # ties: the sharper path first
    apgd = [r['gradient'] for r in rows if r['attack'] == 'apgd-ce']
    assert apgd == [ranked[0], ranked[1], f"ensemble:{ranked[0]}+{ranked[1]}"]
    cw = [r['gradient'] for r in rows if r['loss'] == 'cw']
    assert cw == ranked[:2]
    keys = [(r['attack'], r['gradient'], r['loss'], r['steps'], r['restarts']) for r in rows]
    assert len(keys) == len(set(keys))


def test_resolve_gradient_and_sharpening_rules():
    ranked = ['bptt:fast-sigmoid:10', 'published']
    assert plan.resolve_gradient('best:2', ranked) == 'published'
    assert plan.resolve_gradient('best:3', ranked) is None
    assert plan.resolve_gradient('ensemble:best:4', ranked) == 'ensemble:bptt:fast-sigmoid:10+published'
    assert plan.resolve_gradient('ensemble:best:2', ranked[:1]) is None  # one member = best:1
    assert plan.resolve_gradient('none', ranked) == 'none'
    assert plan.resolve_gradient('sharper:2:best:1', ranked) == 'bptt:fast-sigmoid:20'
    assert plan.resolve_gradient('sharper:2:best:2', ranked) is None  # the published backward
    # double k until two doublings in a row were weaker than the family's best
    fs = {k: f'bptt:fast-sigmoid:{k}' for k in ('2.5', '5', '10')}
    assert plan.next_sharpness(fs['5'], {fs['2.5']: 0.6, fs['5']: 0.5}) == fs['10']
    assert plan.next_sharpness(fs['5'], {fs['2.5']: 0.4, fs['5']: 0.5}) == fs['10']
    assert plan.next_sharpness(fs['10'], {fs['2.5']: 0.4, fs['5']: 0.5, fs['10']: 0.45}) is None
    assert plan.next_sharpness(fs['10'], {fs['2.5']: 0.4, fs['5']: 0.5, fs['10']: 0.4}) == \
        'bptt:fast-sigmoid:20'
    assert plan.sharpest_per_family(['published', 'bptt:arctan:1.25', 'bptt:arctan:5',
                                     'bptt:arctan:2.5']) == ['bptt:arctan:5']


def test_ties_in_the_ranking_put_the_sharper_path_first():
    assert suite.sharpness('bptt:fast-sigmoid:10') == 10.0 and suite.sharpness('published') == 0.0
    accuracy = {'published': 0.6, 'bptt:fast-sigmoid:5': 0.63, 'bptt:fast-sigmoid:10': 0.63}
    assert suite.rank_paths(accuracy) == ['published', 'bptt:fast-sigmoid:10', 'bptt:fast-sigmoid:5']


def test_the_sweep_sharpens_each_family_while_it_helps(data, monkeypatch):
    """Sharper paths are tried (k doubled) until two in a row were weaker than the family's best,
    up to the cap."""
    def sharpening_plan(suite_name, threat, eps, model, **kwargs):
        return plan.Plan((), plan.Sweep(('bptt:fast-sigmoid:2.5',), steps=2, sharpen_to=8), ())
    monkeypatch.setattr(suite, 'suite_plan', sharpening_plan)
    result, _ = run_small(data, eps_list=(Fraction(16, 255),))
    swept = [(r['gradient'], r['accuracy']) for r in result['rows']]
    names = [name for name, _ in swept]
    assert names[0] == 'bptt:fast-sigmoid:2.5' and names[1] == 'bptt:fast-sigmoid:5'
    assert len(names) <= 4 and names == ['bptt:fast-sigmoid:' + k for k in ('2.5', '5', '10', '20')][:len(names)]
    accuracy = [a for _, a in swept]
    for i in range(3, len(swept)):  # no doubling after two in a row weaker than the best
        assert not (accuracy[i - 1] > min(accuracy[:i]) and accuracy[i - 2] > min(accuracy[:i]))


def test_full_plan_takes_the_published_attacks_from_attack_py(data):
    from attack import ATTACKS as PUBLISHED
    model = data[0]
    full = plan.suite_plan('full', 'per-step', Fraction(8, 255), model, largest=True)
    assert [s.attack for s in full.published] == ['published-' + n for n in ('fgsm', 'rfgsm', 'pgd', 'bim')]
    assert [s.steps for s in full.published] == [PUBLISHED[n].params.get('steps', 1)
                                                 for n in ('fgsm', 'rfgsm', 'pgd', 'bim')]
    assert full.sweep.samples and full.sweep.sharpen_to >= 8
    ranks = {s.gradient for s in full.attacks if s.attack == 'apgd-ce'}
    assert {'best:1', 'best:2', 'best:3'} <= ranks and any(r.startswith('ensemble:') for r in ranks)
    assert all(s.steps >= 100 for s in full.attacks if s.attack in ('apgd-ce', 'apgd-dlr')
               and not s.gradient.startswith('ensemble:'))
    assert all(s.survivors for s in full.attacks if s.attack.startswith('apgd'))
    standalone = plan.suite_plan('full', 'per-step', Fraction(8, 255), model, standalone=True)
    assert standalone.sweep.samples is None
    assert not any(s.survivors for s in standalone.attacks if s.attack != 'square')


def test_the_attack_table_is_read_only():
    with pytest.raises(TypeError):
        attacks.ATTACKS['mine'] = attacks.ATTACKS['pgd']


def test_full_plan_attacks_through_sharp_paths_whatever_the_ranking(data):
    """APGD-CE through fast-sigmoid and arctan at k = 5 and 10 are fixed rows (a 10-step PGD ranks
    sharp surrogates too low to be chosen by rank), beside the strongest path at 2x its sharpness
    and the ensemble of its family at 2x, 4x, 8x, with a restart; the masking checks' rows run
    on the first images only."""
    full = plan.suite_plan('full', 'per-step', Fraction(8, 255), data[0], largest=True)
    grads = {s.gradient for s in full.attacks if s.attack == 'apgd-ce'}
    assert {'bptt:fast-sigmoid:5', 'bptt:arctan:5', 'bptt:fast-sigmoid:10', 'bptt:arctan:10',
            'sharper:2:best:1',
            'ensemble:family:best:1'} <= grads
    assert max(s.restarts for s in full.attacks if s.attack == 'apgd-dlr') >= 2
    subset_rows = {(s.attack, s.steps): s.samples for s in full.attacks if s.samples}
    assert subset_rows == {('pgd', 7): plan.CHECK_SAMPLES['full'], ('pgd', 100): plan.CHECK_SAMPLES['full'],
                           ('square', 5000): plan.SQUARE_SAMPLES}
    ranked = ['bptt:arctan:10', 'published']
    assert (plan.resolve_gradient('ensemble:family:best:1', ranked) ==
            'ensemble:bptt:arctan:5+bptt:arctan:10+bptt:arctan:20')
    assert plan.resolve_gradient('ensemble:family:best:2', ranked) is None  # published: no family


def test_full_plan_of_a_model_without_spikes_adds_autoattacks_rest():
    """The ANN twin (one gradient path, cheap forwards): APGD-T through its autograd gradient and
    Square on every survivor, beside APGD-CE/DLR; a spiking model keeps Square on the first
    images and no APGD-T."""
    from layers import AnnNetwork
    from conftest import SMALL_CONV_LAYERS
    ann = AnnNetwork({'n_steps': N_STEPS, 'model': 'ANN', 'loss': 'kernel', 'n_class': 4,
                      'tau_m': 5, 'tau_s': 3, 'is_bn': False}, SMALL_CONV_LAYERS, [1, 8, 8])
    full = plan.suite_plan('full', 'per-step', Fraction(8, 255), ann, largest=True)
    rows = {(s.attack, s.gradient): s for s in full.attacks}
    assert rows[('apgd-t', 'best:1')].survivors and rows[('apgd-t', 'best:1')].steps >= 100
    assert rows[('square', 'none')].samples is None
    spiking = plan.suite_plan('full', 'per-step', Fraction(8, 255), tiny_network()[0], largest=True)
    assert not any(s.attack == 'apgd-t' for s in spiking.attacks)


def test_rows_on_the_first_images_attack_only_those(data, monkeypatch):
    """``AttackSpec.samples``: a standalone row attacks the first N images and reports its
    accuracy over them; a survivors row on the first N still reports the worst case over all."""
    Spec = plan.AttackSpec

    def subset_plan(suite_name, threat, eps, model, **kwargs):
        return plan.Plan((), plan.Sweep(('published',), steps=2),
                         (Spec('pgd', 'best:1', 'ce', 3, samples=6),
                          Spec('pgd', 'best:1', 'cw', 3, survivors=True, samples=4)))
    monkeypatch.setattr(suite, 'suite_plan', subset_plan)
    result, table = run_small(data, eps_list=(Fraction(16, 255),))
    n = len(data[3])
    standalone, survivors = result['rows'][1], result['rows'][2]
    assert standalone['scope'] == 'subset' and standalone['n_samples'] == 6
    assert (table['fooled'][1][6:] == -1).all() and (table['fooled'][2][4:] == -1).all()
    assert survivors['scope'] == 'survivors' and survivors['n_samples'] == n
    assert 0 <= survivors['accuracy'] == survivors['worst_after'] <= 1


def test_ensemble_gradient_is_the_mean_of_normalised_member_gradients(data):
    model, _, images, labels = data
    x = expand(images[:4])
    members = ['bptt:sigmoid:5', 'bptt:fast-sigmoid:10']

    def grad_through(path):
        leaf = x.clone().requires_grad_(True)
        with paths.scores_through(model, path) as scores:
            out = scores(leaf)
            (grad,) = torch.autograd.grad(losses.LOSSES['ce'](out, labels[:4]).sum(), leaf)
        return out.detach(), grad
    expected = 0
    for member in members:
        _, grad = grad_through(member)
        expected = expected + grad / grad.flatten(1).abs().mean(1).view(-1, 1, 1, 1, 1)
    out, grad = grad_through(paths.ensemble_name(members))
    torch.testing.assert_close(grad, expected / len(members))
    with torch.no_grad():
        torch.testing.assert_close(out, threats.class_scores(model, x))  # the forward is the model's


def test_attacks_differentiate_the_input_only_and_leave_the_parameters_as_they_were(data):
    model = data[0]
    model.layers[0].weight.requires_grad_(False)  # a user's frozen parameter stays frozen
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable
    x = expand(data[2][:2]).requires_grad_(True)
    for path in ('published', 'bptt:fast-sigmoid:5', 'ensemble:bptt:sigmoid:5+published'):
        with paths.scores_through(model, path) as scores:
            assert not any(p.requires_grad for p in model.parameters())
            scores(x).sum().backward()
        assert x.grad is not None and all(p.grad is None for p in model.parameters())
        assert [p for p in model.parameters() if p.requires_grad] == trainable
    model.layers[0].weight.requires_grad_(True)


class PlainModel(torch.nn.Module):
    """A model with no spiking layers, with the Network call convention."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(2 * 8 * 8, N_CLASS).double()

    def forward(self, x, is_train=False):
        return self.linear(x.mean(-1).flatten(1))[..., None], None


def test_a_model_without_spiking_layers_has_only_the_autograd_path(data):
    model = PlainModel()
    assert paths.gradient_paths_for(model, 'full') == ['autograd']
    assert paths.gradient_paths_for(data[0], 'quick')[0] == 'published'
    with pytest.raises(ValueError, match='no spiking layers'):
        with paths.scores_through(model, 'bptt:sigmoid:5'):
            pass
    x = expand(data[2])
    labels = model(x)[0].sum(-1).argmax(1)
    with paths.scores_through(model, 'autograd') as scores:
        x_adv = attacks.pgd(scores, x, labels, threat_model(), Fraction(64, 255), steps=5)
    perturbation_checks(x, x_adv, threat_model(), Fraction(64, 255))
    quick = plan.suite_plan('quick', 'per-step', Fraction(8, 255), model)
    assert quick.sweep.paths == ('autograd',)
