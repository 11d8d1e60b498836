"""Checkpoints in the released format ``{'net': state_dict (keys 'module.*'), 'epoch': int}`` -- so the
published code can read ours -- plus what resuming needs (optimiser, scheduler, RNG states, the
resolved config, the best accuracy). Written atomically; read with ``weights_only=True``."""
import os
import pickle
import random
import tempfile

import numpy as np
import torch

RELEASED_PREFIX = 'module.'


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


def atomic_write(path, write):
    """Call ``write(file_object)`` on a temporary file next to ``path`` and rename it into place,
    so a crash never leaves a half-written ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_stale_temporaries(directory):
    """Delete the temporary files of writes that a killed run left in ``directory``."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.startswith('.') and name.endswith('.tmp'):
                os.remove(os.path.join(directory, name))


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


def released_state_dict(model_without_ddp):
    """The state dict with the ``module.`` keys of the released (DDP-saved) checkpoints."""
    return {RELEASED_PREFIX + key: value.detach().cpu()
            for key, value in model_without_ddp.state_dict().items()}


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


def save_checkpoint(path, model_without_ddp, epoch, **extra):
    """``{'net', 'epoch'}`` plus ``extra`` (optimizer, scheduler, rng, config, best_acc, ...)."""
    payload = {'net': released_state_dict(model_without_ddp), 'epoch': int(epoch), **extra}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path):
    """Read a checkpoint with ``weights_only=True``: anything but tensors and plain containers is
    refused before it can run. Accepts ``{'net': state_dict, ...}`` or a bare state dict."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint '{path}' was refused: it holds objects other than tensors and plain "
            f"containers, which could run code when loaded ({str(exc).splitlines()[0][:200]})") from None
    except Exception as exc:  # noqa: BLE001 -- truncated zip, not a torch file, ...
        raise CheckpointError(f"checkpoint '{path}' cannot be read: "
                              f"{str(exc).splitlines()[0][:200]}") from None
    if isinstance(checkpoint, dict) and 'net' not in checkpoint and checkpoint and \
            all(torch.is_tensor(v) for v in checkpoint.values()):
        checkpoint = {'net': checkpoint, 'epoch': 0}
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('net'), dict) or \
            not all(torch.is_tensor(v) for v in checkpoint['net'].values()):
        raise CheckpointError(f"checkpoint '{path}' is not {{'net': state_dict, 'epoch': int}} "
                              f"nor a state dict")
    return checkpoint


def load_weights(model_without_ddp, checkpoint, path):
    """Strict load of ``checkpoint['net']`` (with or without ``module.``); a mismatch is a
    CheckpointError naming the file and the keys."""
    try:
        model_without_ddp.load_state_dict(checkpoint['net'], strict=True)
    except RuntimeError as exc:
        message = ' '.join(str(exc).split())
        raise CheckpointError(f"checkpoint '{path}' does not fit the network of the config: "
                              f"{message[:600]}") from None
