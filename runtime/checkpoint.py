"""Checkpoints in the released format ``{'net': state_dict (keys 'module.*'), 'epoch': int}`` -- so the
published code can read ours -- plus what resuming needs (optimiser, scheduler, RNG states, the
resolved config, the best accuracy; training/resume.py reads them back). Written atomically; read
with ``weights_only=True``; a checkpoint holding NaN/Inf weights is neither written nor read."""
import errno
import io
import os
import pickle
import tempfile

import torch

from errors import UserError

RELEASED_PREFIX = 'module.'


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file."""


class OutputWriteError(UserError):
    """A run output (checkpoint, results, the run directory) that cannot be written: full disk,
    read-only file system, a path through a file, no permission. The message is one line naming
    the path."""


def first_line(exc):
    """The first line of an exception's message, or its type when the message is empty
    (``torch.load`` of a zero-byte file raises ``EOFError('')``)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _blocking_file(path):
    """The first existing component of ``path`` (walking up) that is not a directory, or None."""
    path = os.path.abspath(path)
    while True:
        if os.path.lexists(path):
            return None if os.path.isdir(path) else path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def output_error(exc, path):
    """Translate an OSError raised while creating or writing ``path`` into a one-line
    OutputWriteError naming the path (a full disk, a read-only mount, a file in the way, ...)."""
    directory = os.path.dirname(os.path.abspath(path)) or '/'
    code = getattr(exc, 'errno', None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return OutputWriteError(f"no space left on {directory} (writing '{path}')")
    if code == errno.EROFS:
        return OutputWriteError(f"{directory} is on a read-only file system (writing '{path}')")
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = _blocking_file(path)
        if blocker is not None:
            return OutputWriteError(f"'{blocker}' is a file, not a directory (writing '{path}')")
    if code in (errno.EACCES, errno.EPERM):
        return OutputWriteError(f"no permission to write in {directory} (writing '{path}')")
    if code == errno.EISDIR:
        return OutputWriteError(f"'{path}' is a directory")
    return OutputWriteError(f"cannot write '{path}': {getattr(exc, 'strerror', None) or first_line(exc)}")


def current_umask():
    """The process umask, read without changing it where /proc allows (os.umask sets it, which
    would race with threads creating files, e.g. TensorBoard's writer)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Call ``write(file_object)`` and put the bytes at ``path`` through a temporary file next to
    it and a rename, so a crash or a full disk never leaves a half-written ``path`` and never
    replaces a good one. The bytes are produced in memory first: torch.save streaming into a
    file on a full disk fails with an opaque zip-writer error, plain writes with ENOSPC. The
    file gets the permissions of a normal ``open()`` (0o666 & ~umask), not mkstemp's 0o600.
    Any OSError becomes a one-line OutputWriteError naming the path."""
    buffer = io.BytesIO()
    write(buffer)
    data = buffer.getbuffer()
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.',
                                   suffix='.tmp')
        with os.fdopen(fd, 'wb') as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise output_error(exc, path) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass  # the original error matters; remove_stale_temporaries cleans up on --resume


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


def first_nonfinite(state_dict):
    """``(name, count)`` of the first floating-point tensor holding NaN/Inf, or None."""
    for name, value in state_dict.items():
        if torch.is_tensor(value) and (value.is_floating_point() or value.is_complex()):
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                return name, bad
    return None


def save_checkpoint(path, model_without_ddp, epoch, **extra):
    """``{'net', 'epoch'}`` plus ``extra`` (optimizer, scheduler, rng, config, best, results).
    Weights holding NaN/Inf are never written (the training loop stops a diverged run earlier,
    with the epoch and step; this is the last line of defence for every caller)."""
    net = released_state_dict(model_without_ddp)
    bad = first_nonfinite(net)
    if bad is not None:
        raise CheckpointError(f"refusing to write '{path}': tensor '{bad[0]}' holds {bad[1]} "
                              f"NaN/Inf values")
    payload = {'net': net, 'epoch': int(epoch), **extra}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path):
    """Read a checkpoint with ``weights_only=True``: anything but tensors and plain containers is
    refused before it can run. Accepts ``{'net': state_dict, ...}`` or a bare state dict. An
    empty, unreadable or non-finite (NaN/Inf weights) file is a one-line CheckpointError."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint '{path}' is a directory, not a file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        if os.path.getsize(path) == 0:
            raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes)")
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint '{path}' was refused: it holds objects other than tensors and plain "
            f"containers, which could run code when loaded ({first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 -- truncated zip, not a torch file, no permission, ...
        raise CheckpointError(f"checkpoint '{path}' cannot be read (not a PyTorch checkpoint, or "
                              f"truncated): {type(exc).__name__}: {first_line(exc)}") from None
    if isinstance(checkpoint, dict) and 'net' not in checkpoint and checkpoint and \
            all(torch.is_tensor(v) for v in checkpoint.values()):
        checkpoint = {'net': checkpoint, 'epoch': 0}
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('net'), dict) or \
            not all(torch.is_tensor(v) for v in checkpoint['net'].values()):
        raise CheckpointError(f"checkpoint '{path}' is not {{'net': state_dict, 'epoch': int}} "
                              f"nor a state dict")
    bad = first_nonfinite(checkpoint['net'])
    if bad is not None:
        raise CheckpointError(f"checkpoint '{path}' was refused: tensor '{bad[0]}' holds {bad[1]} "
                              f"NaN/Inf values (saved from a diverged run?)")
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

