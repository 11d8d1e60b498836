"""Every random number generator a run touches: seeding them, and their states as plain tensors and
ints, so that a checkpoint (read with ``weights_only=True``) can carry them and --resume can
continue every stream where it stopped."""
import random

import numpy as np
import torch


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states():
    """Every RNG the training touches, as plain tensors/ints (loadable with weights_only)."""
    np_state = np.random.get_state()
    states = {
        'torch': torch.get_rng_state(),
        'python': random.getstate(),
        'numpy': {'keys': torch.from_numpy(np_state[1].astype(np.int64)), 'pos': int(np_state[2]),
                  'has_gauss': int(np_state[3]), 'cached_gaussian': float(np_state[4])},
    }
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    torch.set_rng_state(states['torch'])
    version, internal, gauss = states['python']
    random.setstate((version, tuple(internal), gauss))
    np_state = states['numpy']
    np.random.set_state(('MT19937', np_state['keys'].numpy().astype(np.uint32), np_state['pos'],
                         np_state['has_gauss'], np_state['cached_gaussian']))
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])
