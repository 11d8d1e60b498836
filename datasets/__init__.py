"""Data sets of the HoSNN experiments: MNIST, FashionMNIST, CIFAR10, CIFAR100 and SVHN.

``build_datasets(name, data_path)`` returns (train_set, test_set) yielding
(normalised float32 image tensor [C, H, W], int label), with the transforms of the
published code.  The files are looked for, in this order:

1. in ``data_path``, either in torchvision's on-disk layout (``data_path/MNIST/raw/...``,
   ``data_path/cifar-10-batches-py/...``, ``data_path/train_32x32.mat``) or with the
   files placed directly in ``data_path``;
2. in read-only copies installed by system packages (``SYSTEM_COPIES``);
3. by torchvision's download into ``data_path`` (``download=True`` only).

If all of this fails, DatasetNotFound says which files to put where.
Importing this package has no side effects.
"""
import contextlib
import os
import socket

from torchvision import datasets as tvd
from torchvision import transforms as T

from .idx import IdxImageDataset, read_idx

INPUT_SHAPES = {'MNIST': (1, 28, 28), 'FashionMNIST': (1, 28, 28), 'CIFAR10': (3, 32, 32),
                'CIFAR100': (3, 32, 32), 'SVHN': (3, 32, 32)}
N_CLASSES = {'MNIST': 10, 'FashionMNIST': 10, 'CIFAR10': 10, 'CIFAR100': 100, 'SVHN': 10}
# Per-channel (mean, std) used by Normalize, as in the published code.
NORMALISATION = {
    'MNIST': ((0.1307,), (0.3081,)),
    'FashionMNIST': ((0.2860,), (0.3530,)),
    'CIFAR10': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    'CIFAR100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'SVHN': ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
# Read-only copies from system packages, searched after data_path and never written to.
# Debian's dataset-fashion-mnist installs the four gzipped idx files here.
SYSTEM_COPIES = {'FashionMNIST': ('/usr/share/datasets/fashion-mnist',)}

_MNIST_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
                't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
_IDX_SETS = ('MNIST', 'FashionMNIST')
# Per data set: the folder torchvision uses under data_path ('' = data_path itself) and
# the files that must be in it.  Idx files may also be gzipped (name + '.gz').
_LAYOUT = {
    'MNIST': ('MNIST/raw', _MNIST_FILES),
    'FashionMNIST': ('FashionMNIST/raw', _MNIST_FILES),
    'CIFAR10': ('cifar-10-batches-py', tuple(f'data_batch_{i}' for i in range(1, 6)) + ('test_batch', 'batches.meta')),
    'CIFAR100': ('cifar-100-python', ('train', 'test', 'meta')),
    'SVHN': ('', ('train_32x32.mat', 'test_32x32.mat')),
}
# Where a user can get the files by hand (the URLs torchvision downloads from).
_SOURCES = {
    'MNIST': 'https://ossci-datasets.s3.amazonaws.com/mnist/',
    'FashionMNIST': 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/',
    'CIFAR10': 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it)',
    'CIFAR100': 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (extract it)',
    'SVHN': 'http://ufldl.stanford.edu/housenumbers/',
}
# torchvision opens its download URLs without a timeout, so a network that silently drops
# packets would hang the run; downloads bound every socket operation by this many seconds.
DOWNLOAD_TIMEOUT_S = 30


class DatasetNotFound(Exception):
    """The data set's files are in none of the searched places and could not be downloaded."""


def build_datasets(name, data_path, train_samples=None, test_samples=None, download=True):
    """Return (train_set, test_set) of data set `name`.

    Both yield (image tensor [C, H, W] normalised float32, int label).
    data_path: directory of the files (relative paths are relative to the current directory).
    train_samples / test_samples: keep only the first N samples (None = all).
    download: try torchvision's download into data_path when the files are nowhere found.
    """
    if name not in INPUT_SHAPES:
        raise ValueError(f'unknown data set {name!r}; expected one of {", ".join(INPUT_SHAPES)}')
    for arg, n in (('train_samples', train_samples), ('test_samples', test_samples)):
        if n is not None and n < 1:
            raise ValueError(f'{arg} must be None or a positive number of samples, got {n}')
    data_path = os.fspath(data_path)
    if name == 'SVHN':
        _require_scipy()

    directory, searched = _locate(name, data_path)
    download_error = None
    if directory is None and download:
        try:
            _download(name, data_path)
        # Any failure (no network, HTTP error, bad checksum, broken archive) means the same
        # to the user: the data is not there.  The cause goes into the message and __cause__.
        except Exception as error:  # noqa: BLE001
            download_error = error
        else:
            directory, searched = _locate(name, data_path)
    if directory is None:
        raise DatasetNotFound(_not_found_message(name, data_path, searched, download, download_error)) \
            from download_error

    if name in _IDX_SETS:
        train_set, test_set = _idx_datasets(name, directory)
    else:
        train_set, test_set = _torchvision_datasets(name, directory)
    return _keep_first(train_set, train_samples), _keep_first(test_set, test_samples)


def _require_scipy():
    try:
        import scipy.io  # noqa: F401  (torchvision's SVHN reads the .mat files with scipy.io.loadmat)
    except ImportError as error:
        raise ImportError("SVHN needs scipy to read its .mat files: pip install 'scipy>=1.10'") from error


def _file_in(directory, name, file_name):
    """Path of `file_name` in `directory` (idx files may be gzipped), or None if absent."""
    variants = (file_name, file_name + '.gz') if name in _IDX_SETS else (file_name,)
    for variant in variants:
        path = os.path.join(directory, variant)
        if os.path.isfile(path):
            return path
    return None


def _locate(name, data_path):
    """Return (the first directory holding all files of `name` or None, [(directory, missing files)])."""
    subfolder, files = _LAYOUT[name]
    candidates = [os.path.join(data_path, subfolder), data_path] if subfolder else [data_path]
    searched = []
    for directory in candidates + list(SYSTEM_COPIES.get(name, ())):
        missing = [f for f in files if _file_in(directory, name, f) is None]
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


def _download(name, data_path):
    """Download `name` into data_path with torchvision's own classes.

    They put the files where _locate looks and verify the md5 of what they fetch.  The
    data they then load is discarded; it is loaded again through _locate.
    """
    with _socket_timeout(DOWNLOAD_TIMEOUT_S):
        if name == 'SVHN':
            for split in ('train', 'test'):
                tvd.SVHN(data_path, split=split, download=True)
        else:
            getattr(tvd, name)(data_path, train=True, download=True)


def _not_found_message(name, data_path, searched, download, download_error):
    subfolder, files = _LAYOUT[name]
    lines = [f'{name} data set not found. Searched, in this order:']
    for directory, missing in searched:
        state = ('does not exist' if not os.path.isdir(directory)
                 else f'missing {", ".join(missing)}')
        lines.append(f'  {directory}: {state}')
    if not os.path.isabs(data_path):
        lines.append(f'(relative paths are relative to the current directory, {os.getcwd()})')
    if not download:
        lines.append('Download was not attempted (download=False).')
    elif download_error is None:
        lines.append(f'Download into {data_path} finished, but the files are still not there.')
    else:
        lines.append(f'Download into {data_path} failed: {type(download_error).__name__}: {str(download_error).strip()}')
    if name in _IDX_SETS:
        wanted = ', '.join(f + '.gz' for f in files) + ' (gzipped or not)'
    else:
        wanted = ', '.join(files)
    where = data_path if not subfolder else f'{data_path} (or {os.path.join(data_path, subfolder)})'
    lines.append(f'Put {wanted} into {where}; they come from {_SOURCES[name]}.')
    return '\n'.join(lines)


def _idx_datasets(name, directory):
    (mean,), (std,) = NORMALISATION[name]

    def split(prefix):
        images = read_idx(_file_in(directory, name, f'{prefix}-images-idx3-ubyte'))
        labels = read_idx(_file_in(directory, name, f'{prefix}-labels-idx1-ubyte'))
        return IdxImageDataset(images, labels, mean, std)

    return split('train'), split('t10k')


# torchvision's CIFAR and SVHN classes compare the md5 of every file with the official
# release.  That rejects the small stand-ins the tests write (and any re-pickled copy),
# though the parsing code behind the check is exactly what we want.  These subclasses
# only check that the files exist; downloads still go through torchvision's original
# classes, which verify the md5 of what they fetch.
class _ExistenceCheckedCIFAR:
    base_folder = ''  # root is the directory holding the batch files themselves

    def _check_integrity(self):
        return all(os.path.isfile(os.path.join(self.root, f)) for f, _ in self.train_list + self.test_list)


class _CIFAR10(_ExistenceCheckedCIFAR, tvd.CIFAR10):
    meta = {**tvd.CIFAR10.meta, 'md5': None}  # check_integrity(path, None) only tests existence


class _CIFAR100(_ExistenceCheckedCIFAR, tvd.CIFAR100):
    meta = {**tvd.CIFAR100.meta, 'md5': None}


class _SVHN(tvd.SVHN):
    def _check_integrity(self):
        return os.path.isfile(os.path.join(self.root, self.filename))


def _transform(name, train):
    mean, std = NORMALISATION[name]
    augmentation = {
        'CIFAR10': [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()],
        'CIFAR100': [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.TrivialAugmentWide()],
        'SVHN': [T.RandomCrop(32, padding=4)],  # no flip: mirrored digits are not digits
    }[name] if train else []
    return T.Compose(augmentation + [T.ToTensor(), T.Normalize(mean, std)])


def _torchvision_datasets(name, directory):
    if name == 'SVHN':
        return tuple(_SVHN(directory, split=split, transform=_transform(name, split == 'train'))
                     for split in ('train', 'test'))
    cls = {'CIFAR10': _CIFAR10, 'CIFAR100': _CIFAR100}[name]
    return tuple(cls(directory, train=train, transform=_transform(name, train)) for train in (True, False))


def _keep_first(dataset, n):
    """Keep the first n samples (all if n is None or exceeds the size), in place."""
    if n is not None:
        # Images are in .data; labels in .targets (SVHN: .labels).
        for attribute in ('data', 'targets', 'labels'):
            if hasattr(dataset, attribute):
                setattr(dataset, attribute, getattr(dataset, attribute)[:n])
    return dataset
