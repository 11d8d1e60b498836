"""Data sets of the HoSNN experiments: MNIST, FashionMNIST, CIFAR10, CIFAR100 and SVHN.

Everything that differs between them is their entry in ``DATASETS`` (datasets/registry.py).
``build_datasets(name, data_path)`` returns (train_set, test_set) yielding
(normalised float32 image tensor [C, H, W], int label), with the transforms of the
published code.  The files are looked for, in this order:

1. in ``data_path``, either in torchvision's on-disk layout (``data_path/MNIST/raw/...``,
   ``data_path/cifar-10-batches-py/...``, ``data_path/train_32x32.mat``) or with the
   files placed directly in ``data_path``;
2. in read-only copies installed by system packages (``DatasetSpec.system_copies``);
3. by torchvision's download into ``data_path`` (``download=True`` only).

If all of this fails, DatasetNotFound says which files to put where.  Files that are there
but unusable (malformed, crafted, inconsistent, empty) raise DataFileError, one line naming
the file.  No file is unpickled with plain ``pickle`` (datasets/safe_pickle.py).
Importing this package has no side effects and does not import torchvision.
"""
import contextlib
import importlib
import os
import socket
import types

from .errors import DataFileError, DatasetNotFound
from .registry import DATASETS, DatasetSpec, dataset_by_index, yaml_path

__all__ = ['DATASETS', 'DatasetSpec', 'DataFileError', 'DatasetNotFound', 'build_datasets',
           'dataset_by_index', 'yaml_path', 'INPUT_SHAPES', 'N_CLASSES', 'NORMALISATION']

# Views of the registry under the names other modules have always imported (read-only).
INPUT_SHAPES = types.MappingProxyType({name: spec.input_shape for name, spec in DATASETS.items()})
N_CLASSES = types.MappingProxyType({name: spec.n_class for name, spec in DATASETS.items()})
# Per-channel (mean, std) used by Normalize, as in the published code.
NORMALISATION = types.MappingProxyType({name: (spec.mean, spec.std) for name, spec in DATASETS.items()})
# torchvision opens its download URLs without a timeout, so a network that silently drops
# packets would hang the run; downloads bound every socket operation by this many seconds.
DOWNLOAD_TIMEOUT_S = 30


def build_datasets(name, data_path, train_samples=None, test_samples=None, download=True):
    """Return (train_set, test_set) of data set `name`.

    Both yield (image tensor [C, H, W] normalised float32, int label).
    data_path: directory of the files (relative paths are relative to the current directory).
    train_samples / test_samples: keep only the first N samples (None = all).
    download: try torchvision's download into data_path when the files are nowhere found.
    """
    if name not in DATASETS:
        raise ValueError(f'unknown data set {name!r}; expected one of {", ".join(DATASETS)}')
    spec = DATASETS[name]
    for arg, n in (('train_samples', train_samples), ('test_samples', test_samples)):
        if n is not None and n < 1:
            raise ValueError(f'{arg} must be None or a positive number of samples, got {n}')
    data_path = os.fspath(data_path)
    _require_modules(spec)

    directory, searched = _locate(spec, data_path)
    download_error = None
    if directory is None and download:
        existing = _existing_directories(data_path)
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                spec.download(data_path)
        # Any failure (no network, HTTP error, bad checksum, broken archive) means the same
        # to the user: the data is not there.  The cause goes into the message and __cause__.
        except Exception as error:  # noqa: BLE001
            download_error = error
        else:
            directory, searched = _locate(spec, data_path)
        if directory is None:  # a failed download leaves no empty folders behind
            _remove_new_empty_directories(data_path, existing)
    if directory is None:
        raise DatasetNotFound(_not_found_message(spec, data_path, searched, download, download_error)) \
            from download_error

    train_set, test_set = spec.reader(spec, directory)
    return _keep_first(train_set, train_samples), _keep_first(test_set, test_samples)


def _existing_directories(data_path):
    """The directories at and under ``data_path`` and its ancestors that exist now."""
    path = os.path.abspath(data_path)
    existing = set()
    for root, dirs, _ in os.walk(path):
        existing.add(root)
    while path != os.path.dirname(path):
        if os.path.isdir(path):
            existing.add(path)
        path = os.path.dirname(path)
    return existing


def _remove_new_empty_directories(data_path, existing):
    """Remove the empty directories a failed download created (innermost first), up to the
    outermost one it created."""
    path = os.path.abspath(data_path)
    top = path
    while os.path.dirname(top) not in existing and os.path.dirname(top) != top:
        top = os.path.dirname(top)
    if not os.path.isdir(top):
        return
    for root, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        if root not in existing:
            try:
                os.rmdir(root)
            except OSError:
                pass  # not empty: something was downloaded after all; leave it


def _require_modules(spec):
    """The optional modules of ``spec.requires`` (e.g. SVHN's scipy.io) must import."""
    for module, message in spec.requires:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ImportError(message) from error


def _locate(spec, data_path):
    """Return (the first directory holding all files of `spec` or None, [(directory, missing files)])."""
    candidates = [os.path.join(data_path, spec.folder), data_path] if spec.folder else [data_path]
    searched = []
    for directory in candidates + list(spec.system_copies):
        missing = [f for f in spec.files if spec.path_of(directory, f) is None]
        if not missing:
            return directory, searched
        searched.append((directory, missing))
    return None, searched


@contextlib.contextmanager
def _socket_timeout(seconds):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _not_found_message(spec, data_path, searched, download, download_error):
    """One line (a user error is one line): where it looked, what the download did, what to do."""
    places = [f"{directory} ({'does not exist' if not os.path.isdir(directory) else 'missing ' + ', '.join(missing)})"
              for directory, missing in searched]
    parts = [f"{spec.name} data set not found; searched, in this order: {'; '.join(places)}"]
    if not os.path.isabs(data_path):
        parts.append(f'relative paths are relative to the current directory, {os.getcwd()}')
    if not download:
        parts.append('download was not attempted (download=False)')
    elif download_error is None:
        parts.append(f'download into {data_path} finished, but the files are still not there')
    else:
        reason = ' '.join(str(download_error).split())
        parts.append(f'download into {data_path} failed: {type(download_error).__name__}: {reason}')
    if spec.gzip_ok:
        wanted = ', '.join(f + '.gz' for f in spec.files) + ' (gzipped or not)'
    else:
        wanted = ', '.join(spec.files)
    where = data_path if not spec.folder else f'{data_path} (or {os.path.join(data_path, spec.folder)})'
    parts.append(f'put {wanted} into {where}; they come from {spec.source}')
    return '. '.join(part[0].upper() + part[1:] for part in parts) + '.'


def _keep_first(dataset, n):
    """Keep the first n samples (all if n is None or exceeds the size), in place."""
    if n is not None:
        # Images are in .data; labels in .targets (SVHN: .labels).
        for attribute in ('data', 'targets', 'labels'):
            if hasattr(dataset, attribute):
                setattr(dataset, attribute, getattr(dataset, attribute)[:n])
    return dataset
