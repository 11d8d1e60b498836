"""The Fashion-MNIST model zoo matches its card (checkpoints/fashionmnist/README.md): every file's
sha256 and epoch, a strict load into the network the card names, and (slow, with the Debian
Fashion-MNIST) the card's clean accuracy on all 10 000 test images, exactly."""
import hashlib
import json
import os
import re

import pytest

import main
from runtime.checkpoint import load_checkpoint
from config import load_config
from training.experiment import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(ROOT, 'checkpoints', 'fashionmnist')
SYSTEM_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
# | `file.pth` | model | epoch | `sha256` | clean (10k) | ...
CARD_ROW = re.compile(r'^\| `(?P<file>[\w.]+\.pth)` \| (?P<model>[^|]+) \| (?P<epoch>\d+) \| '
                      r'`(?P<sha256>[0-9a-f]{64})` \| (?P<clean>[\d.]+) \|')


def card_rows():
    with open(os.path.join(ZOO, 'README.md')) as f:
        rows = [m.groupdict() for m in map(CARD_ROW.match, f) if m]
    assert rows, 'no model rows found in the card'
    return rows


def neuron(row):
    """The Network.model a card row names: its model column starts with LIF, ANN or HoSNN."""
    model = row['model'].strip()
    return 'LIF' if model.startswith('LIF') else 'ANN' if model.startswith('ANN') else 'ALIF'


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize('row', card_rows(), ids=lambda row: row['file'])
def test_checkpoint_matches_its_card(row):
    path = os.path.join(ZOO, row['file'])
    assert sha256(path) == row['sha256']
    checkpoint = load_checkpoint(path)  # weights only
    # (an ANN twin's file also names its model: its state dict has its LIF twin's names)
    extra = {'config'} if neuron(row) == 'ANN' else set()
    assert set(checkpoint) == {'net', 'epoch', *extra} and checkpoint['epoch'] == int(row['epoch'])
    assert all(key.startswith('module.') for key in checkpoint['net'])
    cfg, _ = load_config(os.path.join(ROOT, 'networks', 'FashionMNIST.yaml'),
                         [f"Network.model={neuron(row)}"])
    build_model(cfg, ckpt=path)  # strict: a missing or extra tensor raises


def test_nds_file_matches_its_card():
    with open(os.path.join(ZOO, 'README.md')) as f:
        card = f.read()
    nds = os.path.join(ROOT, 'spikedata', 'fashionmnist', 'lif_clean_nds.pt')
    assert sha256(nds) in card


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(SYSTEM_FASHION_MNIST),
                    reason='Debian package dataset-fashion-mnist not installed')
@pytest.mark.parametrize('row', card_rows(), ids=lambda row: row['file'])
def test_clean_accuracy_reproduces_the_card(row, tmp_path):
    """The card's reproduce command (main.py on the checkpoint, no attack) gives its number."""
    out = tmp_path / 'run'
    code = main.main(['-d', '3', '--set', f"Network.model={neuron(row)}",
                      '--set', 'DEFAULT.cleantrain=false', '--set', 'ATTACK.strength=[]',
                      '--set', f"DEFAULT.ckpt={os.path.join(ZOO, row['file'])}",
                      '--set', f'Network.data_path={tmp_path / "data"}', '--out', str(out)])
    assert code == 0
    with open(out / 'results.json') as f:
        (clean,) = json.load(f)['robustness']
    assert clean['n_samples'] == 10000
    assert f"{100 * clean['accuracy']:.2f}" == row['clean']


WORST_CELL = re.compile(r'\| \*\*(?P<worst>[\d.]+)\*\*(?: \(old(?: suite)?: [\d.]+[^)]*\))? \|')
RESULTS = os.path.join(ROOT, 'results', 'fashionmnist')


def result_path(name):
    """The zoo re-evaluation's file (adaptive_full_v2/) or the robust-training study's."""
    zoo = os.path.join(RESULTS, 'adaptive_full_v2', name, 'robustness.json')
    study = os.path.join(RESULTS, 'robust_training', name, 'eps8_per-step', 'robustness.json')
    return study if os.path.exists(study) else zoo


def test_worst_case_column_is_the_committed_full_suite_result():
    """Each card's worst case at 8/255 is the full suite's result committed beside it: 1 000
    images, per-step, not clamped, every sanity check passed."""
    with open(os.path.join(ZOO, 'README.md')) as f:
        lines = [line for line in f if CARD_ROW.match(line)]
    checked = 0
    for line in lines:
        name = CARD_ROW.match(line)['file'][:-len('.pth')]
        cell = WORST_CELL.search(line)
        path = result_path(name)
        if cell is None:
            assert not os.path.exists(path), f"{name}: the card does not show {path}"
            continue
        with open(path) as f:
            result = json.load(f)
        assert result['suite'] == 'full' and result['n_samples'] == 1000
        [entry] = [e for e in result['worst_case'] if e['eps'] == '8/255']
        assert entry['threat'] == 'per-step' and entry['clamp'] is False
        assert f"{100 * entry['accuracy']:.1f}" == cell['worst'], name
        assert all(check['passed'] is not False for check in result['sanity']), name
        checked += 1
    assert checked >= 6


# | `name` | 2/255 | 4/255 | 8/255 | 8/255, static |  (the card's table by eps and threat model)
EPS_ROW = re.compile(r'^\| `(?P<name>\w+)` \| (?P<e2>[^|]+) \| (?P<e4>[^|]+) \| (?P<e8>[^|]+) \| '
                     r'(?P<static>[^|]+) \|$')
EPS_COLUMNS = (('e2', '2/255', 'per-step'), ('e4', '4/255', 'per-step'), ('e8', '8/255', 'per-step'),
               ('static', '8/255', 'static'))
NOT_RUN = 'not run'


def evaluation_path(name, eps, threat):
    """Where the full suite's result for zoo model ``name`` at ``eps`` (``'2/255'``) and
    ``threat`` is committed: the robust-training study's folder for its models, else
    adaptive_full_v2/ (8/255 per-step at the top, the others in eps2/, eps4/ and static/)."""
    numerator = eps.split('/')[0]
    study = os.path.join(RESULTS, 'robust_training', name)
    if os.path.isdir(study):
        return os.path.join(study, f'eps{numerator}_{threat}', 'robustness.json')
    folder = 'static' if threat == 'static' else '' if numerator == '8' else f'eps{numerator}'
    return os.path.join(RESULTS, 'adaptive_full_v2', folder, name, 'robustness.json')


def test_worst_case_by_eps_table_is_the_committed_full_suite_results():
    """Every cell of the card's table by ε and threat model is the worst case of the full
    suite's committed run (1 000 images, not clamped, every sanity check passed); a cell that
    says "not run" has no such run committed, so the table cannot fall behind the results."""
    with open(os.path.join(ZOO, 'README.md')) as f:
        rows = [m.groupdict() for m in map(EPS_ROW.match, (line.rstrip('\n') for line in f)) if m]
    rows = [row for row in rows if os.path.exists(os.path.join(ZOO, row['name'] + '.pth'))]
    assert len(rows) >= 8
    for row in rows:
        for key, eps, threat in EPS_COLUMNS:
            cell, path = row[key].strip(), evaluation_path(row['name'], eps, threat)
            if cell.startswith(NOT_RUN):
                assert not os.path.exists(path), f"{row['name']} {eps} {threat}: {path} exists"
                continue
            with open(path) as f:
                result = json.load(f)
            assert result['suite'] == 'full' and result['n_samples'] == 1000, path
            [entry] = [e for e in result['worst_case'] if e['eps'] == eps]
            assert entry['threat'] == threat and entry['clamp'] is False, path
            value = re.match(r'\*\*(?P<worst>[\d.]+)\*\*', cell)  # then "(old suite: ...)" if any
            assert value and value['worst'] == f"{100 * entry['accuracy']:.1f}", (row['name'], eps, threat)
            assert all(check['passed'] is not False for check in result['sanity']), path
