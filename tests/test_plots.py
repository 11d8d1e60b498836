"""robustness/plots.py: what robust_accuracy.png draws, read from plot_data (not from pixels):
the 64/255 sanity run is off the ε axis, one ε gives sorted bars, several give lines grouped by
attack family, the worst case is drawn."""
import json
import os
import sys
from fractions import Fraction

import pytest

from robustness.plots import FAMILIES, family, is_sanity, plot_data, plot_png

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def row(attack, eps, accuracy, gradient='published', loss='ce', steps=10, restarts=1,
        threat='per-step', clamp=False, sanity=False, path_choice='fixed', scope='all'):
    return {'attack': attack, 'gradient': gradient, 'loss': loss, 'steps': steps,
            'restarts': restarts, 'eps': eps, 'threat': threat, 'clamp': clamp,
            'accuracy': accuracy, 'n_samples': 100, 'scope': scope, 'path_choice': path_choice,
            'label': 'published attack' if attack.startswith('published-') else 'adaptive',
            'sanity_eps': sanity, 'time_s': 1.0}


def attacks_at(eps, base, sanity=False, **kw):
    """One row of every family at ``eps`` (accuracies decreasing from ``base``)."""
    return [row('published-pgd', eps, base, loss='published', steps=7, sanity=sanity, **kw),
            row('published-fgsm', eps, base + 0.05, loss='published', steps=1, sanity=sanity, **kw),
            row('pgd', eps, base - 0.10, gradient='bptt:sigmoid:5', sanity=sanity, **kw),
            row('apgd-ce', eps, base - 0.20, gradient='bptt:sigmoid:5', steps=50, sanity=sanity,
                path_choice='best:1', **kw),
            row('transfer-pgd', eps, base + 0.10, gradient='partner:published', steps=20,
                sanity=sanity, **kw),
            row('square', eps, base - 0.25, gradient='none', loss='margin', steps=5000,
                sanity=sanity, scope='survivors', **kw)]


def worst(eps, accuracy, sanity=False, threat='per-step', clamp=False):
    return {'eps': eps, 'threat': threat, 'clamp': clamp, 'accuracy': accuracy,
            'n_samples': 100, 'broken_first': {}, 'sanity_eps': sanity}


def result(rows, worst_case):
    return {'rows': rows, 'worst_case': worst_case, 'sanity': []}


@pytest.fixture
def multi():
    rows = attacks_at('2/255', 0.8) + attacks_at('8/255', 0.6) + attacks_at('64/255', 0.3, True)
    return result(rows, [worst('2/255', 0.5), worst('8/255', 0.3), worst('64/255', 0.0, True)])


def test_the_sanity_eps_is_not_on_the_curve(multi):
    (panel,) = plot_data(multi)
    assert panel['kind'] == 'lines'
    plotted = set(panel['eps'])
    for series in panel['series']:
        plotted |= set(series['eps'])
    plotted |= {point['eps'] for point in panel['worst']}
    assert plotted == {2 / 255, 8 / 255}
    assert float(Fraction(64, 255)) not in plotted
    assert panel['sanity'] == [{'eps': '64/255', 'accuracy': 0.0}]  # named in a note instead


def test_64_over_255_is_the_sanity_eps_even_unflagged(multi):
    """--eps 64/255 given explicitly: the rows are not flagged, it is still the masking check."""
    for entry in multi['rows'] + multi['worst_case']:
        entry['sanity_eps'] = False
    (panel,) = plot_data(multi)
    assert panel['eps'] == [2 / 255, 8 / 255]
    assert is_sanity({'eps': '64/255'}) and not is_sanity({'eps': '8/255', 'sanity_eps': False})


def test_one_eps_gives_sorted_bars():
    rows = attacks_at('8/255', 0.6) + attacks_at('64/255', 0.3, True)
    (panel,) = plot_data(result(rows, [worst('8/255', 0.3), worst('64/255', 0.0, True)]))
    assert panel['kind'] == 'bars' and panel['series'] == []
    assert panel['eps'] == [8 / 255]
    accuracies = [bar['accuracy'] for bar in panel['bars']]
    assert accuracies == sorted(accuracies) and len(accuracies) == 6
    assert panel['bars'][0]['family'] == 'black box'  # the strongest first, on top
    assert panel['bars'][0]['label'].endswith('(on survivors)')
    assert panel['worst'] == [{'eps': 8 / 255, 'accuracy': 0.3}]
    assert [b['published'] for b in panel['bars']].count(True) == 2


def test_legend_is_grouped_by_family(multi):
    (panel,) = plot_data(multi)
    families = [series['family'] for series in panel['series']]
    assert families == sorted(families, key=FAMILIES.index)  # contiguous, in FAMILIES order
    assert set(families) == {'published attacks', 'PGD', 'APGD', 'transfer', 'black box'}
    assert all(s['published'] == (s['family'] == 'published attacks') for s in panel['series'])
    assert family(row('apgd-t', '8/255', 0.5)) == 'APGD'
    assert family(row('pgd', '8/255', 0.5, gradient='partner:bptt:published:5')) == 'transfer'


def test_a_path_sweep_is_one_series_at_its_strongest_path():
    paths = ['published', 'bptt:sigmoid:5', 'bptt:arctan:5', 'bptt:triangle:1.25', 'bptt:rectangle:2.5']
    rows = [row('pgd', eps, accuracy + 0.1 * i, gradient=path)
            for eps, accuracy in (('2/255', 0.7), ('4/255', 0.5))
            for i, path in enumerate(paths)]
    (panel,) = plot_data(result(rows, [worst('2/255', 0.7), worst('4/255', 0.5)]))
    (series,) = panel['series']
    assert series['label'] == 'pgd [strongest of 5 paths, ce, 10x1]'
    assert series['accuracy'] == [0.7, 0.5]


def test_one_panel_per_threat_and_clamp(multi):
    static = [dict(r, threat='static', clamp=True) for r in multi['rows']
              if not r['attack'].startswith('published-')]
    multi['rows'] += static
    multi['worst_case'] += [dict(w, threat='static', clamp=True) for w in multi['worst_case']]
    panels = plot_data(multi)
    assert [(p['threat'], p['clamp']) for p in panels] == [('per-step', False), ('static', True)]
    assert all(p['eps'] == [2 / 255, 8 / 255] for p in panels)
    assert 'published attacks' not in {s['family'] for s in panels[1]['series']}
    png = plot_png(multi)
    assert png.startswith(b'\x89PNG')


def test_png_of_bars_and_of_only_the_sanity_run():
    rows = attacks_at('8/255', 0.6)
    assert plot_png(result(rows, [worst('8/255', 0.3)])).startswith(b'\x89PNG')
    only_sanity = result(attacks_at('64/255', 0.3, True), [worst('64/255', 0.0, True)])
    (panel,) = plot_data(only_sanity)
    assert panel['kind'] == 'empty'
    assert plot_png(only_sanity).startswith(b'\x89PNG')


def test_no_matplotlib_no_plot(multi, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib -> ImportError
    assert plot_png(multi) is None


@pytest.mark.parametrize('name,kind,n_eps', [('hosnn_clean', 'lines', 3), ('lif_bptt_ft', 'bars', 1)])
def test_published_results(name, kind, n_eps):
    path = os.path.join(ROOT, 'results', 'fashionmnist', 'adaptive_full', name, 'robustness.json')
    if not os.path.exists(path):
        pytest.skip(f"{path} is not in this checkout")
    with open(path) as f:
        (panel,) = plot_data(json.load(f))
    assert panel['kind'] == kind and len(panel['eps']) == n_eps
    assert float(Fraction(64, 255)) not in panel['eps']
    assert panel['sanity'] and panel['worst']
