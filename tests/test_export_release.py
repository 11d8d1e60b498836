"""scripts/export_release.py: a run's checkpoint -> the released format, loadable strictly."""
import hashlib
import os
import sys

import torch

from runtime.checkpoint import save_checkpoint
from conftest import ROOT, small_alif

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import export_release  # noqa: E402


def test_export_keeps_only_net_and_epoch_and_loads_strictly(tmp_path, capsys):
    model = small_alif()
    run_ckpt = str(tmp_path / 'best.pth')
    save_checkpoint(run_ckpt, model, 7, optimizer={'state': {}}, config={'x': 1}, results={})
    target = str(tmp_path / 'zoo' / 'model.pth')
    assert export_release.main([run_ckpt, target]) == 0
    released = torch.load(target, weights_only=True)
    assert sorted(released) == ['epoch', 'net'] and released['epoch'] == 7
    assert all(key.startswith('module.') for key in released['net'])
    fresh = small_alif(seed=1)
    fresh.load_state_dict(released['net'])  # strict
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 model.state_dict().values()))
    with open(target, 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest() in capsys.readouterr().out


def test_export_refuses_a_checkpoint_with_nan(tmp_path, capsys):
    run_ckpt = str(tmp_path / 'best.pth')
    torch.save({'net': {'module.w': torch.tensor([float('nan')])}, 'epoch': 0}, run_ckpt)
    assert export_release.main([run_ckpt, str(tmp_path / 'out.pth')]) == 2
    assert 'module.w' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'out.pth')


def test_export_of_an_ann_keeps_its_model(tmp_path):
    """An ANN twin's state dict has its LIF twin's names: the released file keeps the model."""
    from training.checkpoint_model import model_of_checkpoint
    run_ckpt = str(tmp_path / 'best.pth')
    save_checkpoint(run_ckpt, small_alif(), 3, config={'Network': {'model': 'ANN', 'lr': 1}})
    target = str(tmp_path / 'ann.pth')
    assert export_release.main([run_ckpt, target]) == 0
    released = torch.load(target, weights_only=True)
    assert released['config'] == {'Network': {'model': 'ANN'}}
    assert model_of_checkpoint(released, target) == ('ANN', 'its saved config')
