import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
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
