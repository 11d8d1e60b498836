"""scripts/demo_verdict.py (make demo's table): which rows it reads from each model's result and
that the published attack is named as such."""
import importlib.util
import os

from conftest import ROOT


def load_script():
    path = os.path.join(ROOT, 'scripts', 'demo_verdict.py')
    spec = importlib.util.spec_from_file_location('demo_verdict', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_result(clean, pgd7, worst):
    rows = [{'attack': 'published-fgsm', 'eps': '8/255', 'accuracy': 0.99},
            {'attack': 'published-pgd', 'eps': '4/255', 'accuracy': 0.98},
            {'attack': 'published-pgd', 'eps': '8/255', 'accuracy': pgd7},
            {'attack': 'pgd', 'eps': '8/255', 'accuracy': 0.01}]
    return {'clean_accuracy': clean, 'rows': rows,
            'worst_case': [{'eps': '64/255', 'accuracy': 0.0}, {'eps': '8/255', 'accuracy': worst}]}


def test_table_has_clean_published_pgd7_and_worst_case_per_model():
    demo = load_script()
    results = {name: fake_result(0.9, 0.5 + i / 10, 0.1 * i) for i, (name, _) in enumerate(demo.MODELS)}
    table = demo.verdict_table(results, 250, 123.4)
    lines = table.splitlines()
    assert 'first 250 test images' in lines[0]
    assert lines[2].split(' | ')[1:] == [title for _, title in demo.MODELS[:-1]] + [demo.MODELS[-1][1] + ' |']
    assert lines[4] == '| clean | 90.0 | 90.0 | 90.0 | 90.0 |'
    assert lines[5] == '| PGD-7 (**published attack**) | 50.0 | 60.0 | 70.0 | 80.0 |'
    assert lines[6] == '| worst case (quick suite, adaptive) | **0.0** | **10.0** | **20.0** | **30.0** |'
