"""scripts/robustness_table.py: the published-attack and worst-case columns come from the right
rows of each evaluate.py result."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def row(attack, eps, accuracy, gradient='published', loss='published', steps=7):
    return {'attack': attack, 'gradient': gradient, 'loss': loss, 'steps': steps, 'restarts': 1,
            'eps': eps, 'threat': 'per-step', 'clamp': False, 'accuracy': accuracy,
            'n_samples': 10, 'scope': 'all', 'path_choice': 'fixed', 'sanity_eps': False}


def result(pgd, adaptive, worst):
    rows, worst_case = [], []
    for eps, p, a, w in zip(('2/255', '8/255'), pgd, adaptive, worst):
        rows += [row('published-pgd', eps, p), row('published-fgsm', eps, p + 0.1, steps=1),
                 row('apgd-ce', eps, a, gradient='bptt:fast-sigmoid:5', loss='ce', steps=50),
                 row('pgd', eps, p - 0.05, loss='ce', steps=10),
                 row('pgd', eps, a + 0.05, gradient='bptt:sigmoid:5', loss='ce', steps=10)]
        worst_case.append({'eps': eps, 'threat': 'per-step', 'clamp': False, 'accuracy': w,
                           'n_samples': 10, 'broken_first': {'clean': 1, 'apgd-ce': 3},
                           'sanity_eps': False})
    worst_case.append({'eps': '64/255', 'threat': 'per-step', 'clamp': False, 'accuracy': 0.0,
                       'n_samples': 10, 'broken_first': {}, 'sanity_eps': True})
    return {'checkpoint': {'path': 'm.pth', 'sha256': '0' * 64, 'epoch': 3}, 'commit': 'abcdef0',
            'suite': 'full', 'n_samples': 10, 'clean_accuracy': 0.9, 'rows': rows,
            'worst_case': worst_case, 'wall_time_s': 60.0,
            'sanity': [{'check': 'a', 'passed': True, 'detail': ''},
                       {'check': 'b', 'passed': False, 'detail': 'masking'},
                       {'check': 'c', 'passed': None, 'detail': 'not run'}]}


def test_tables(tmp_path):
    silent = result((0.85, 0.7), (0.5, 0.2), (0.4, 0.1))
    silent['warnings'] = ['the output layer never spiked']
    for name, res in (('lif', result((0.8, 0.5), (0.7, 0.4), (0.6, 0.3))),
                      ('hosnn', silent)):
        os.makedirs(tmp_path / name)
        (tmp_path / name / 'robustness.json').write_text(json.dumps(res))
    out = tmp_path / 'table'
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'robustness_table.py'),
                           '--out', str(out), f'LIF={tmp_path / "lif"}',
                           f'HoSNN={tmp_path / "hosnn"}'], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = (out / 'tables.md').read_text()
    assert '| LIF | 90.0 | 80.0 | 50.0 | **60.0** | **30.0** |' in text
    assert '| HoSNN | 90.0 | 85.0 | 70.0 | **40.0** | **10.0** |' in text
    assert 'apgd-ce [bptt:fast-sigmoid:5, ce, 50x1] | 20.0' in text
    assert '| LIF | 1 of 3 | b: masking |' in text
    assert '| published | 45.0 | 65.0 |' in text and '| bptt:sigmoid:5 | 45.0 | 25.0 |' in text
    assert '**warning (HoSNN)**: the output layer never spiked' in text
    assert '64/255' not in text.split('## Sanity')[0]  # the masking-check ε is not tabled


def test_a_cascade_run_has_no_strongest_single_attack_but_each_rows_newly_broken(tmp_path):
    """Under the cascade only the sweep and the PGD-7/100 rows ran on every image: the lowest of
    them is not the strongest attack, so the table lists what each cascade row broke instead."""
    res = result((0.8, 0.5), (0.7, 0.4), (0.6, 0.3))
    for r in res['rows']:
        if r['attack'] == 'apgd-ce':
            r.update(scope='survivors', newly_broken=4)
    res['rows'].append(dict(row('apgd-dlr', '8/255', 0.3, gradient='bptt:arctan:10', loss='dlr',
                                steps=100), scope='survivors', newly_broken=2))
    res['rows'].append(dict(row('apgd-ce', '8/255', 0.3, gradient='bptt:arctan:20', loss='ce',
                                steps=100), scope='survivors', newly_broken=0))
    os.makedirs(tmp_path / 'lif')
    (tmp_path / 'lif' / 'robustness.json').write_text(json.dumps(res))
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'robustness_table.py'),
                           '--out', str(tmp_path / 'table'), f'LIF={tmp_path / "lif"}'],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    line = next(l for l in (tmp_path / 'table' / 'tables.md').read_text().splitlines()
                if l.startswith('| LIF | – (cascade run)'))
    assert line.endswith('apgd-ce [bptt:fast-sigmoid:5, ce, 50x1]: +4, '
                         'apgd-dlr [bptt:arctan:10, dlr, 100x1]: +2 |')


def test_bad_argument_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'robustness_table.py'),
                           '--out', str(tmp_path), f'LIF={tmp_path / "missing"}'],
                          capture_output=True, text=True)
    assert done.returncode != 0 and 'missing' in done.stderr and len(done.stderr.splitlines()) == 1
