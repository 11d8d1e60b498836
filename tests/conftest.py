"""What several test modules share: the golden tensors, small runs of main.py on fixture data (their
--set flags, the data directory, results.json) and a small TA-LIF network."""
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from datasets.fixtures import write_mnist_like  # noqa: E402 -- (after ROOT is importable)
from layers import Network  # noqa: E402

GOLDEN_DIR = os.path.join(ROOT, 'tests', 'golden')


def pytest_configure(config):
    # `pytest -m "not slow"` (make test-fast) leaves these out; `make test` runs everything.
    config.addinivalue_line('markers', 'slow: end-to-end runs in subprocesses or many epochs '
                            '(torchrun, the protocol, the Triton interpreter)')


def load_golden(file_name):
    return torch.load(os.path.join(GOLDEN_DIR, file_name), map_location='cpu', weights_only=True)


@pytest.fixture(scope='session')
def golden_kernel():
    return load_golden('hosnn_kernel.pt')


@pytest.fixture(scope='session')
def golden_softmax():
    return load_golden('hosnn_softmax.pt')


# --- Small runs of main.py on fixture data --------------------------------------------------------

N_TRAIN, N_TEST = 96, 33  # 33: an odd test set, so two ranks get unequal shards

# A small MNIST-architecture network (narrow layers: a fast run; weight_scale 2 so that it fires).
SMALL_LAYERS = ['Layers.conv_1.out_channels=4', 'Layers.conv_2.in_channels=4',
                'Layers.conv_2.out_channels=6', 'Layers.FC_1.n_inputs=96',
                'Layers.FC_1.n_outputs=32', 'Layers.output.n_inputs=32'] + [
    f'Layers.{name}.weight_scale=2' for name in ('conv_1', 'conv_2', 'FC_1', 'output')]


def set_flags(settings):
    """``['--set', s, ...]``: each ``SECTION.KEY=VALUE`` of ``settings`` as a command-line flag."""
    return [arg for s in settings for arg in ('--set', s)]


def settings(mnist_dir, *extra, model='LIF', loss='kernel', epochs=1, batch=16, small=True):
    """The ``--set`` flags of a short run of networks/MNIST.yaml on the fixture data in
    ``mnist_dir``: the small network with a random NDS, or (``small=False``) the full one with
    the released NDS; ``extra`` settings last, so they win."""
    nds = 'null' if small else './spikedata/mnist/mnist.pt'
    return set_flags([f'Network.data_path={mnist_dir}', f'Network.model={model}',
                      f'Network.loss={loss}', f'Network.epochs={epochs}',
                      f'Network.batch_size={batch}', 'ATTACK.strength=[1/10]',
                      f'Network.ckpt_v={nds}', *(SMALL_LAYERS if small else []), *extra])


def read_results(out_dir):
    """A run's results.json."""
    with open(os.path.join(out_dir, 'results.json')) as f:
        return json.load(f)


def write_mnist_dir(tmp_path_factory, n_train, n_test):
    """A new directory of MNIST-format fixture files with ``n_train`` / ``n_test`` samples."""
    directory = tmp_path_factory.mktemp('mnist')
    write_mnist_like(str(directory), n_train, n_test)
    return str(directory)


@pytest.fixture(scope='module')
def mnist_dir(tmp_path_factory):
    """N_TRAIN / N_TEST samples of MNIST-format fixture data, written once per test module (a
    module that needs other sizes overrides this fixture with write_mnist_dir)."""
    return write_mnist_dir(tmp_path_factory, N_TRAIN, N_TEST)


# --- Small networks, built directly ----------------------------------------------------------

# Conv + pooling + two linears on 1x8x8 images, 4 classes: the exact-gradient tests' network.
SMALL_CONV_LAYERS = {
    'conv_1': {'type': 'conv', 'in_channels': 1, 'out_channels': 3, 'kernel_size': 3,
               'weight_scale': 3, 'threshold': 1},
    'pooling_1': {'type': 'pooling', 'kernel_size': 2},
    'FC_1': {'type': 'linear', 'n_inputs': 27, 'n_outputs': 12, 'weight_scale': 2, 'threshold': 1},
    'output': {'type': 'linear', 'n_inputs': 12, 'n_outputs': 4, 'weight_scale': 2, 'threshold': 1},
}

# Conv + pooling + two linears on 2x8x8 images whose channels have different statistics, 4
# classes: the adaptive suite's and the adequacy test's network (float64, eval mode).
TWO_CHANNEL_MEAN, TWO_CHANNEL_STD = (0.3, 0.6), (0.25, 0.5)


def two_channel_network(model='LIF', seed=0, channels=2, n_steps=5, n_class=4):
    """``(network, its Network config)``, seeded."""
    network_cfg = {'n_steps': n_steps, 'tau_m': 5.0, 'tau_s': 3.0, 'model': model, 'tau_v': 1.5,
                   'is_bn': False, 'loss': 'kernel', 'n_class': n_class, 'save_target': False,
                   'ckpt_v': None, 'mean': TWO_CHANNEL_MEAN[0], 'std': TWO_CHANNEL_STD[0]}
    layers_cfg = {
        'conv_1': {'type': 'conv', 'in_channels': channels, 'out_channels': 4, 'kernel_size': 3,
                   'weight_scale': 3, 'threshold': 1},
        'pooling_1': {'type': 'pooling', 'kernel_size': 2},
        'FC_1': {'type': 'linear', 'n_inputs': 36, 'n_outputs': 16, 'weight_scale': 3,
                 'threshold': 1},
        'output': {'type': 'linear', 'n_inputs': 16, 'n_outputs': n_class, 'weight_scale': 3,
                   'threshold': 1},
    }
    torch.manual_seed(seed)
    return Network(network_cfg, layers_cfg, [channels, 8, 8]).double().eval(), network_cfg


# --- A small TA-LIF network, built directly -------------------------------------------------------

SMALL_ALIF_NETWORK = {'n_steps': 5, 'tau_m': 5, 'tau_s': 3, 'model': 'ALIF', 'tau_v': 10,
                      'is_bn': False, 'loss': 'kernel', 'n_class': 3, 'save_target': False}
SMALL_ALIF_LAYERS = {
    'FC_1': {'type': 'linear', 'n_inputs': 16, 'n_outputs': 12, 'weight_scale': 3, 'threshold': 1},
    'output': {'type': 'linear', 'n_inputs': 12, 'n_outputs': 3, 'weight_scale': 3, 'threshold': 1}}


def small_alif(seed=0):
    """A two-layer float64 TA-LIF network on 1x4x4 images (3 classes), seeded."""
    torch.manual_seed(seed)
    return Network(SMALL_ALIF_NETWORK, SMALL_ALIF_LAYERS, (1, 4, 4)).double()


def assert_random_start_attack(attack, model, x, labels, eps=0.1):
    """A random-start training attack stays in the eps-ball and the [0, 1] pixel range, and two
    seeds give two different examples."""
    torch.manual_seed(1)
    first = attack(model, x, labels, eps, (0.0, 1.0))
    torch.manual_seed(2)
    second = attack(model, x, labels, eps, (0.0, 1.0))
    assert (first - x).abs().max() <= eps + 1e-12 and first.min() >= 0 and first.max() <= 1
    assert not torch.equal(first, second)
