"""robustness.evaluate, the evaluation API: the example (a plain-PyTorch LIF with user gradient
paths) end to end on random data, the output conventions of other people's models, this
project's networks as they are, and bad arguments."""
import contextlib
import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import robustness
from conftest import ROOT
from robustness.api import ImageScoresModel, adapt, swapped_attribute
from robustness.paths import gradient_paths_for, scores_through


def load_example():
    path = os.path.join(ROOT, 'examples', 'evaluate_any_snn.py')
    spec = importlib.util.spec_from_file_location('evaluate_any_snn', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """Tiny batches on a shared machine: one intra-op thread (two spin against other jobs and
    made this test 10x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_example_runs_the_quick_suite_through_the_user_paths(capsys, one_thread):
    result = load_example().main(['--random-data', '--samples', '8', '--train-steps', '0',
                                    '--budget', 'smoke'])
    gradients = {row['gradient'] for row in result['rows']}
    sweep = {row['gradient']: row for row in result['rows'] if row['scope'] == 'subset'}
    assert set(sweep) == {'autograd', 'sigmoid:1', 'sigmoid:16'}
    assert all(row['n_samples'] == 8 for row in sweep.values())
    # plain autograd and both user paths are swept, and the ensemble mixes them
    assert {'autograd', 'sigmoid:1', 'sigmoid:16'} <= gradients
    assert any(g.startswith('ensemble:') and g.count('+') == 1 for g in gradients)  # best:2
    assert any(row['label'] == 'published attack' for row in result['rows'])
    assert result['n_samples'] == 8 and result['clean_accuracy'] == 1.0 and result['model_convention'] == 'images->scores'
    assert [e['eps'] for e in result['worst_case']] == ['8/255', '64/255']
    arrays = result['per_sample']
    assert arrays['fooled'].shape == (len(result['rows']), 8)
    assert arrays['worst_case_robust'].shape == (2, 8)
    assert np.array_equal(arrays['labels'], arrays['labels'].astype(np.int64))
    assert any(check['check'].startswith('worst case <= 1%') for check in result['sanity'])
    assert result['budget'] == 'smoke'
    assert {row['steps'] for row in result['rows'] if row['label'] != 'published attack'} <= {2, 3, 4, 5, 10}
    assert 'worst case at eps=8/255' in capsys.readouterr().out


class Linear(nn.Module):
    def __init__(self, shape='flat'):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 3)
        self.shape = shape

    def forward(self, images):
        scores = self.fc(images.flatten(1))
        if self.shape == 'time-first':      # SpikingJelly multi-step: [T, B, n_class]
            return scores.unsqueeze(0).expand(4, *scores.shape) / 4
        if self.shape == 'tuple':            # snnTorch: (spikes, membrane)
            return scores, None
        return scores


@pytest.mark.parametrize('shape', ['flat', 'time-first', 'tuple'])
def test_adapter_gives_scores_shaped_b_n_1_whatever_the_output(shape):
    images = torch.rand(5, 1, 4, 4)
    wrapped = ImageScoresModel(Linear(shape), 3)
    out, _ = wrapped(images.unsqueeze(-1), False)
    assert out.shape == (5, 3, 1)
    torch.testing.assert_close(out[..., 0], Linear('flat')(images))


def test_user_paths_switch_the_backward_and_are_restored():
    calls = []

    @contextlib.contextmanager
    def path(name):
        calls.append(name)
        yield

    model = adapt(Linear(), 3, gradient_paths={'a': lambda: path('a'), 'b': lambda: path('b')})
    assert gradient_paths_for(model, 'quick') == ['autograd', 'a', 'b']
    assert gradient_paths_for(model, 'published') == ['autograd']
    x = torch.rand(2, 1, 4, 4, 1, requires_grad=True)
    with scores_through(model, 'ensemble:a+b') as scores:
        scores(x).sum().backward()
    assert calls == ['a', 'a', 'b']  # forward through the first member, backward through each
    with pytest.raises(ValueError, match='its only paths are autograd, a, b'):
        with scores_through(model, 'bptt:sigmoid:4'):
            pass


def test_swapped_attribute_restores():
    modules = [nn.Module(), nn.Module()]
    modules[0].surrogate_function = 'old'
    with swapped_attribute(modules, 'surrogate_function', 'new'):
        assert modules[0].surrogate_function == 'new' and not hasattr(modules[1], 'surrogate_function')
    assert modules[0].surrogate_function == 'old'


def test_bad_arguments_are_value_errors():
    images, labels = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match='suite'):
        robustness.evaluate(Linear(), images, labels, suite='huge')
    with pytest.raises(ValueError, match='threat'):
        robustness.evaluate(Linear(), images, labels, threat='sideways')
    with pytest.raises(ValueError, match='not a usable name'):
        robustness.evaluate(Linear(), images, labels, gradient_paths={'x+y': contextlib.nullcontext})
    with pytest.raises(ValueError, match=r'\[N, C, H, W\]'):
        robustness.evaluate(Linear(), images[0], labels)


def test_published_suite_on_a_plain_model_with_per_channel_normalisation():
    images = torch.rand(6, 2, 4, 2)  # 16 inputs: two channels
    labels = Linear()(images).argmax(1)  # all clean-correct
    result = robustness.evaluate(Linear(), images, labels, eps='4/255', suite='published',
                                 mean=[0.5, 0.4], std=[0.2, 0.3], clamp=True, sanity_eps=False)
    assert result['clean_accuracy'] == 1.0
    assert [row['attack'] for row in result['rows']] == [
        'published-fgsm', 'published-rfgsm', 'published-pgd', 'published-bim']
    assert result['threat_models'] == {'threats': ['per-step'], 'clamps': [True],
                                       'mean': [0.5, 0.4], 'std': [0.2, 0.3]}


def test_project_network_is_used_as_it_is_and_gets_the_surrogate_sweep():
    from conftest import SMALL_LAYERS
    from config import load_config
    from training.experiment import build_model
    cfg, _ = load_config(os.path.join(ROOT, 'networks', 'MNIST.yaml'),
                         [*SMALL_LAYERS, 'Network.model=LIF', 'Network.ckpt_v=null'])
    model = build_model(cfg, None, torch.device('cpu'))
    assert adapt(model, 10) is model
    with pytest.raises(ValueError, match='custom paths are for other models'):
        adapt(model, 10, gradient_paths={'a': contextlib.nullcontext})
    assert 'bptt:published:5' in gradient_paths_for(model, 'quick')
    with pytest.raises(ValueError, match='pass mean= and std='):
        robustness.evaluate(model, torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))


def test_api_gives_evaluate_py_s_rows_for_a_checkpoint(tmp_path_factory, one_thread):
    """The same checkpoint, images and seed: robustness.evaluate's rows, worst case and per-sample
    table are evaluate.py's (both run robustness.evaluation.run_evaluation)."""
    import json

    import evaluate
    import main
    from conftest import SMALL_LAYERS, set_flags, write_mnist_dir
    from config import load_config
    from datasets import NORMALISATION
    from runtime.distributed import DistContext
    from robustness.checkpoint_evaluation import load_samples
    from training.experiment import build_model
    root = tmp_path_factory.mktemp('api')
    mnist_dir = write_mnist_dir(tmp_path_factory, 64, 6)
    flags = set_flags([f'Network.data_path={mnist_dir}', *SMALL_LAYERS, 'Network.ckpt_v=null',
                       'Network.batch_size=16', 'Network.model=LIF'])
    assert main.main(['-d', '0', '--out', str(root / 'run'), *flags, '--set', 'Network.epochs=1',
                      '--set', 'DEFAULT.advtest=false']) == 0
    ckpt = str(root / 'run' / 'best.pth')
    assert evaluate.main(['--ckpt', ckpt, '-d', '0', '--out', str(root / 'eval'), *flags,
                          '--suite', 'quick', '--eps', '8/255', '--no-sanity-eps']) == 0
    with open(root / 'eval' / 'robustness.json') as f:
        written = json.load(f)
    cfg, _ = load_config(os.path.join(ROOT, 'networks', 'MNIST.yaml'), [
        f'Network.data_path={mnist_dir}', *SMALL_LAYERS, 'Network.ckpt_v=null',
        'Network.model=LIF', f'DEFAULT.ckpt={ckpt}'])
    model = build_model(cfg, ckpt, torch.device('cpu'))
    images, labels, _ = load_samples(cfg, DistContext())
    mean, std = NORMALISATION['MNIST']
    result = robustness.evaluate(model, images, labels, eps='8/255', suite='quick', mean=mean,
                                 std=std, batch_size=16, sanity_eps=False)
    key = lambda row: {k: v for k, v in row.items() if k != 'time_s'}
    assert [key(row) for row in result['rows']] == [key(row) for row in written['rows']]
    assert result['worst_case'] == written['worst_case']
    assert result['model_convention'] == 'project'
    npz = np.load(root / 'eval' / 'per_sample.npz')
    assert np.array_equal(npz['fooled'], result['per_sample']['fooled'])


class OneClass(nn.Module):
    """Scores that ignore the image: every prediction is class 2."""

    def forward(self, images):
        scores = torch.zeros(len(images), 3)
        scores[:, 2] = 1.0
        return scores + 0 * images.flatten(1).sum(1, keepdim=True)


def test_a_model_that_predicts_one_class_is_warned_about():
    images, labels = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    lines = []
    result = robustness.evaluate(OneClass(), images, labels, suite='published', sanity_eps=False,
                                 log=lines.append)
    assert any('every prediction is class 2' in w for w in result['warnings'])
    assert any(line.startswith('warning: ') and 'class 2' in line for line in lines)
    linear = Linear()
    images = torch.randn(24, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 5
    predictions = linear(images).argmax(1)
    assert len(predictions.unique()) > 1  # the control below must be a model that discriminates
    healthy = robustness.evaluate(linear, images, predictions, suite='published', sanity_eps=False)
    assert healthy['warnings'] == []
