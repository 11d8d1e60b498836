"""evaluate.py end to end on fixture data: a tiny trained checkpoint, the files it writes and their
keys, bad input as exit status 2, transfer from a partner, and 2-process torchrun counting every
sample once."""
import json
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

import evaluate
import main
from errors import UserError
from conftest import ROOT, SMALL_LAYERS, set_flags, write_mnist_dir
from fixtures import write_mnist_like

N_TRAIN, N_TEST = 64, 9  # 9: two ranks get unequal shards
SMALL = SMALL_LAYERS + ['Network.ckpt_v=null', 'Network.batch_size=16']
ROW_KEYS = {'attack', 'gradient', 'loss', 'steps', 'restarts', 'eps', 'threat', 'clamp', 'accuracy',
            'n_samples'}


def sets(mnist_dir, *extra):
    return set_flags([f'Network.data_path={mnist_dir}', *SMALL, *extra])


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A LIF and a TA-LIF checkpoint of the small MNIST-architecture network (one epoch each)."""
    root = tmp_path_factory.mktemp('evaluate')
    mnist_dir = write_mnist_dir(tmp_path_factory, N_TRAIN, N_TEST)
    ckpts = {}
    for model in ('LIF', 'ALIF'):
        out = str(root / model)
        assert main.main(['-d', '0', '--out', out, *sets(mnist_dir, f'Network.model={model}',
                                                          'Network.epochs=1',
                                                          'DEFAULT.advtest=false')]) == 0
        ckpts[model] = os.path.join(out, 'best.pth')
    return mnist_dir, ckpts


def run_evaluate(mnist_dir, ckpt, out, *args, model='LIF'):
    return evaluate.main(['--ckpt', ckpt, '-d', '0', '--out', str(out),
                          *sets(mnist_dir, f'Network.model={model}'), *args])


def load(out):
    with open(os.path.join(out, 'robustness.json')) as f:
        return json.load(f)


def test_quick_suite_writes_every_file_with_its_keys(trained, tmp_path):
    mnist_dir, ckpts = trained
    out = tmp_path / 'quick'
    assert run_evaluate(mnist_dir, ckpts['ALIF'], out, '--suite', 'quick', '--eps', '8/255',
                        '--samples', '6', '--partner', ckpts['LIF'], model='ALIF') == 0
    assert sorted(os.listdir(out)) == ['per_sample.npz', 'report.md', 'robust_accuracy.png',
                                       'robustness.json']
    result = load(out)
    assert {'checkpoint', 'commit', 'versions', 'rows', 'worst_case', 'sanity'} <= set(result)
    assert set(result['checkpoint']) == {'path', 'sha256', 'epoch'}
    assert len(result['checkpoint']['sha256']) == 64 and result['checkpoint']['epoch'] == 0
    assert result['versions']['torchattacks'] and result['versions']['torch']
    for row in result['rows']:
        assert ROW_KEYS <= set(row)
        assert row['n_samples'] == 6 and 0 <= row['accuracy'] <= 1
        assert row['threat'] == 'per-step' and row['clamp'] is False
        Fraction(row['eps'])  # an exact fraction string
        assert row['eps'] in ('8/255', '64/255')
    attacks = {row['attack'] for row in result['rows']}
    assert {'published-pgd', 'pgd', 'apgd-ce', 'apgd-dlr', 'transfer-pgd'} <= attacks
    assert {row['gradient'] for row in result['rows'] if row['attack'] == 'pgd'} >= {
        'published', 'bptt:published:5', 'bptt:fast-sigmoid:2.5'}
    published = [row for row in result['rows'] if row['attack'].startswith('published-')]
    assert all(row['label'] == 'published attack' for row in published)
    for entry in result['worst_case']:
        assert {'eps', 'threat', 'clamp', 'accuracy', 'n_samples'} <= set(entry)
        same = [r['accuracy'] for r in result['rows']
                if (r['eps'], r['threat'], r['clamp']) == (entry['eps'], entry['threat'], entry['clamp'])]
        assert entry['accuracy'] <= min(same)
    assert {(e['eps']) for e in result['worst_case']} == {'8/255', '64/255'}
    for check in result['sanity']:
        assert {'check', 'passed', 'detail'} <= set(check)
        assert check['passed'] in (True, False, None) and isinstance(check['detail'], str)
    assert any('zero input gradients' in c['check'] for c in result['sanity'])
    # The binarization test of the suite's strongest attack, at the largest eps only (not 64/255)
    adequacy = [c for c in result['sanity'] if c['check'].startswith('attack adequacy')]
    assert len(adequacy) == 1 and adequacy[0]['eps'] == '8/255'
    assert adequacy[0]['n_samples'] == 6 and adequacy[0]['threshold'] == 0.95
    assert adequacy[0]['attack'].startswith('apgd-ce [')  # the quick suite's first APGD-CE row
    assert adequacy[0]['n_broken'] <= adequacy[0]['n_applicable'] <= 6
    if adequacy[0]['passed'] is False:
        assert adequacy[0]['detail'].endswith('attack inadequate')
    report = (out / 'report.md').read_text()
    assert 'published attack' in report and 'Worst case' in report
    assert 'attack adequacy: binarization test' in report
    arrays = np.load(out / 'per_sample.npz', allow_pickle=False)
    assert arrays['fooled'].shape == (len(result['rows']), 6)
    assert arrays['sample_index'].tolist() == list(range(6))


def test_static_clamped_threat_model(trained, tmp_path):
    mnist_dir, ckpts = trained
    out = tmp_path / 'static'
    assert run_evaluate(mnist_dir, ckpts['LIF'], out, '--suite', 'quick', '--eps', '48/255',
                        '--samples', '4', '--threat', 'static', '--clamp', 'true',
                        '--no-sanity-eps') == 0
    result = load(out)
    assert result['rows'] and all(r['threat'] == 'static' and r['clamp'] is True
                                  for r in result['rows'])
    assert not any(r['attack'].startswith('published-') for r in result['rows'])  # per-step only
    masking = next(c for c in result['sanity'] if c['check'].startswith('worst case'))
    assert masking['passed'] is None  # --no-sanity-eps


@pytest.mark.parametrize('args,culprit', [
    (['--eps', '__import__("os")'], '--eps'),
    (['--threat', 'sideways'], '--threat'),
    (['--suite', 'published', '--threat', 'static'], '--suite published'),
    (['--samples', '0'], '--samples'),
])
def test_bad_input_is_one_line_and_exit_status_2(trained, tmp_path, capsys, args, culprit):
    mnist_dir, ckpts = trained
    code = run_evaluate(mnist_dir, ckpts['LIF'], tmp_path / 'bad', *args)
    assert code == UserError.exit_status
    err = capsys.readouterr().err
    assert culprit in err and len(err.strip().splitlines()) == 1


def test_missing_checkpoint_is_exit_status_2(trained, tmp_path, capsys):
    mnist_dir, _ = trained
    assert run_evaluate(mnist_dir, str(tmp_path / 'none.pth'), tmp_path / 'o') == UserError.exit_status
    assert 'none.pth' in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_count_each_sample_once(trained, tmp_path):
    """2 ranks (shards of 5 and 4 images) give the one-process per-sample table of the
    deterministic published attacks, in the original sample order."""
    mnist_dir, ckpts = trained
    common = ['--ckpt', ckpts['LIF'], '-d', '0', '--suite', 'published', '--eps', '8/255',
              '--no-sanity-eps', *sets(mnist_dir, 'Network.model=LIF')]
    one = tmp_path / 'one'
    assert evaluate.main([*common, '--out', str(one)]) == 0
    two = tmp_path / 'two'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                           '--nproc_per_node=2', os.path.join(ROOT, 'evaluate.py'), *common,
                           '--out', str(two), '--device', 'cpu'],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = load(one), load(two)
    assert b['world_size'] == 2
    assert all(row['n_samples'] == N_TEST for row in b['rows'])
    pa, pb = (np.load(d / 'per_sample.npz', allow_pickle=False) for d in (one, two))
    assert pb['sample_index'].tolist() == list(range(N_TEST))
    assert pa['labels'].tolist() == pb['labels'].tolist()
    for index, row in enumerate(a['rows']):
        if row['attack'] != 'published-rfgsm':  # R-FGSM draws a random start per rank
            assert pa['fooled'][index].tolist() == pb['fooled'][index].tolist(), row['attack']
            assert row['accuracy'] == b['rows'][index]['accuracy']


@pytest.mark.slow
def test_protocol_suite_adds_the_adaptive_worst_case(tmp_path, monkeypatch):
    """protocol.py --suite quick: the table gets each model's worst case, which is no higher
    than any of its published rows, and each model gets its report."""
    import protocol
    data = str(tmp_path / 'data')
    write_mnist_like(data, 32, 5)
    monkeypatch.chdir(tmp_path)  # the NDS goes to ./spikedata/mnist/
    out = tmp_path / 'run'
    assert protocol.main(['-d', '0', '--out', str(out), '--lif-epochs', '1', '--hosnn-epochs', '1',
                          '--ft-epochs', '1', '--suite', 'quick',
                          *sets(data, 'ATTACK.strength=[8/255]')]) == 0
    summary = json.load(open(out / 'results.json'))
    rows = {r['attack']: r for r in summary['robustness']}
    worst = rows['worst case (quick suite)']
    for name in protocol.MODELS:
        # (R-FGSM's random start differs between the two runs: not compared)
        assert worst[name] <= min(rows[a][name] for a in ('fgsm', 'pgd', 'bim'))
        report = load(out / name / 'robustness-quick')
        assert report['partner'].endswith(os.path.join(protocol.PARTNER[name], 'best.pth'))
        assert any(r['attack'] == 'transfer-pgd' for r in report['rows'])
    assert '| worst case (quick suite) | 8/255 |' in summary['table_markdown']


def test_a_silent_output_layer_is_warned_about_not_reported_silently(trained, tmp_path, capsys):
    mnist_dir, ckpts = trained
    out = tmp_path / 'dead'
    assert run_evaluate(mnist_dir, ckpts['LIF'], out, '--suite', 'published', '--eps', '1/10',
                        '--no-sanity-eps', '--set', 'Layers.output.threshold=1000') == 0
    warnings = load(out)['warnings']
    assert warnings and 'never spiked' in warnings[0]
    assert 'never spiked' in capsys.readouterr().out + open(out / 'report.md').read()
    healthy = tmp_path / 'healthy'
    assert run_evaluate(mnist_dir, ckpts['LIF'], healthy, '--suite', 'published', '--eps', '1/10',
                        '--no-sanity-eps') == 0
    assert load(healthy)['warnings'] == []
