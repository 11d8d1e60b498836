"""protocol.py end to end on fixture data: four stages, the NDS handed from LIF to HoSNN, the
LIF vs HoSNN table with the transfer and noise rows, and --resume skipping finished stages."""
import json
import os

import pytest
import torch

import protocol
from runtime.checkpoint import load_checkpoint
from fixtures import write_mnist_like

N_TEST = 21


@pytest.mark.slow
def test_protocol_end_to_end(tmp_path, monkeypatch, capsys):
    data = str(tmp_path / 'data')
    write_mnist_like(data, 64, N_TEST)
    monkeypatch.chdir(tmp_path)  # (nothing may land in the working directory: see below)
    out = str(tmp_path / 'run')
    args = ['-d', '0', '--out', out, '--lif-epochs', '1', '--hosnn-epochs', '1', '--ft-epochs', '1',
            '--set', f'Network.data_path={data}', '--set', 'Network.batch_size=16',
            '--set', 'ATTACK.strength=[1/10]']
    assert protocol.main(args) == 0

    nds = torch.load(os.path.join(out, 'lif_clean', 'nds.pt'), weights_only=True)  # under --out
    assert sorted(os.listdir(tmp_path)) == ['data', 'run']
    hosnn = load_checkpoint(os.path.join(out, 'hosnn_clean', 'best.pth'))
    torch.testing.assert_close(hosnn['net']['module.layers.2.target_train'], nds['conv_2'])
    assert hosnn['config']['Network']['model'] == 'ALIF'
    fine_tuned = json.load(open(os.path.join(out, 'hosnn_ft', 'results.json')))
    assert fine_tuned['config']['DEFAULT']['advtrain'] is True

    summary = json.load(open(os.path.join(out, 'results.json')))
    rows = {(r['attack'], r['eps']): r for r in summary['robustness']}
    assert list(rows) == [('clean', 0.0)] + [(a, 0.1) for a in
                                             ('fgsm', 'rfgsm', 'pgd', 'pgd-transfer', 'bim', 'noise')]
    for row in rows.values():
        assert row['n_samples'] == N_TEST
        assert all(0 <= row[m] <= 1 for m in protocol.MODELS)
    assert set(summary['stages']) == {*protocol.MODELS, 'adversarial_test'}
    assert '| pgd-transfer (published attack) | 1/10 |' in summary['table_markdown']
    assert 'HoSNN FGSM-trained' in capsys.readouterr().out

    # --resume: every stage is finished, only the test runs again, with the same numbers.
    assert protocol.main(args + ['--resume']) == 0
    assert 'finished earlier, skipped' in capsys.readouterr().out
    again = json.load(open(os.path.join(out, 'results.json')))
    deterministic = lambda s: [r for r in s['robustness'] if r['attack'] not in ('rfgsm', 'noise')]  # noqa: E731
    assert deterministic(again) == deterministic(summary)
