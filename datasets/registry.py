"""The registry of the data sets: everything that differs between them, one entry each.

Adding a data set is one ``DatasetSpec`` in ``DATASETS`` plus its ``networks/<name>.yaml``;
``-d`` numbers, config validation, file search, error messages, loaders and test fixtures all
read the entry.  Importing this module has no side effects and does not import torchvision.
"""
import dataclasses
import functools
import os
import types
from typing import Callable, Optional, Tuple

from runtime.paths import PROJECT_ROOT

from . import fixtures
from .cifar import read_cifar
from .idx import read_idx_sets
from .svhn import read_svhn



@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One data set.

    name: the data set's name in configs (``Network.dataset``) and file names.
    index: its ``-d`` number.
    input_shape: (C, H, W) of one image; n_class: number of classes, labels are 0..n_class-1.
    mean, std: per-channel Normalize constants of the published code.
    augmentation: training-only transforms before ToTensor + Normalize (a function returning a
        fresh list, as transforms are objects), or None.
    folder: torchvision's folder under data_path ('' = data_path itself); the files are also
        accepted directly in data_path.
    train_files, test_files, extra_files: the files that must all be there (extra: metadata).
    gzip_ok: each file may also be gzipped (name + '.gz'), as idx files often are.
    system_copies: read-only directories of system packages, searched after data_path.
    source: where a user gets the files by hand (quoted when they are not found).
    reader: ``reader(spec, directory) -> (train_set, test_set)``, checking every file.
    download: ``download(data_path)``, torchvision's own (md5-verified) download into data_path.
    write_fixture: ``write_fixture(data_path, n_train, n_test, seed=0)`` writes a small data set
        in the real on-disk format that ``build_datasets(name, data_path)`` finds; returns
        {'train': (images, labels), 'test': ...} as numpy arrays (uint8 HW or HWC, int64 labels).
    requires: ``(module, message)`` pairs: optional modules the reader needs, checked before the
        files are looked for; the ImportError says ``message`` (what to install).
    """
    name: str
    index: int
    input_shape: Tuple[int, int, int]
    n_class: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    augmentation: Optional[Callable[[], list]]
    folder: str
    train_files: Tuple[str, ...]
    test_files: Tuple[str, ...]
    extra_files: Tuple[str, ...]
    gzip_ok: bool
    system_copies: Tuple[str, ...]
    source: str
    reader: Callable
    download: Callable
    write_fixture: Callable
    requires: Tuple[Tuple[str, str], ...] = ()

    @property
    def files(self):
        """Every file looked for, in the order the not-found message lists them."""
        return self.train_files + self.test_files + self.extra_files

    def path_of(self, directory, file_name):
        """Path of `file_name` in `directory` (or of its .gz where gzip_ok), None if absent."""
        for variant in (file_name, file_name + '.gz') if self.gzip_ok else (file_name,):
            path = os.path.join(directory, variant)
            if os.path.isfile(path):
                return path
        return None

    def transform(self, train):
        """The published transform of the training (train=True) or test images (PIL in, tensor out)."""
        from torchvision import transforms as T  # deferred: importing the registry stays light
        augmentation = self.augmentation() if train and self.augmentation else []
        return T.Compose(augmentation + [T.ToTensor(), T.Normalize(self.mean, self.std)])


def _cifar10_augmentation():
    from torchvision import transforms as T
    return [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]


def _cifar100_augmentation():
    from torchvision import transforms as T
    return [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.TrivialAugmentWide()]


def _svhn_augmentation():
    from torchvision import transforms as T
    return [T.RandomCrop(32, padding=4)]  # no flip: mirrored digits are not digits


def _download_train_flag(class_name, data_path):
    """torchvision classes taking train=True/False: one call fetches the whole archive."""
    from torchvision import datasets as tvd
    getattr(tvd, class_name)(data_path, train=True, download=True)


def _download_splits(class_name, data_path):
    """torchvision classes taking split='train'/'test': one file per split."""
    from torchvision import datasets as tvd
    for split in ('train', 'test'):
        getattr(tvd, class_name)(data_path, split=split, download=True)


_MNIST_TRAIN = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte')
_MNIST_TEST = ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
_SPECS = (
    DatasetSpec(
        name='MNIST', index=0, input_shape=(1, 28, 28), n_class=10,
        mean=(0.1307,), std=(0.3081,), augmentation=None,
        folder='MNIST/raw', train_files=_MNIST_TRAIN, test_files=_MNIST_TEST, extra_files=(),
        gzip_ok=True, system_copies=(), source='https://ossci-datasets.s3.amazonaws.com/mnist/',
        reader=read_idx_sets, download=functools.partial(_download_train_flag, 'MNIST'),
        write_fixture=fixtures.write_mnist),
    DatasetSpec(
        name='CIFAR10', index=1, input_shape=(3, 32, 32), n_class=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
        augmentation=_cifar10_augmentation, folder='cifar-10-batches-py',
        train_files=tuple(f'data_batch_{i}' for i in range(1, 6)), test_files=('test_batch',),
        extra_files=('batches.meta',), gzip_ok=False, system_copies=(),
        source='https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it)',
        reader=functools.partial(read_cifar, label_key='labels', names_key='label_names'),
        download=functools.partial(_download_train_flag, 'CIFAR10'),
        write_fixture=fixtures.write_cifar10),
    DatasetSpec(
        name='CIFAR100', index=2, input_shape=(3, 32, 32), n_class=100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        augmentation=_cifar100_augmentation, folder='cifar-100-python',
        train_files=('train',), test_files=('test',), extra_files=('meta',), gzip_ok=False,
        system_copies=(), source='https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (extract it)',
        reader=functools.partial(read_cifar, label_key='fine_labels', names_key='fine_label_names'),
        download=functools.partial(_download_train_flag, 'CIFAR100'),
        write_fixture=fixtures.write_cifar100),
    DatasetSpec(
        name='FashionMNIST', index=3, input_shape=(1, 28, 28), n_class=10,
        mean=(0.2860,), std=(0.3530,), augmentation=None,
        folder='FashionMNIST/raw', train_files=_MNIST_TRAIN, test_files=_MNIST_TEST, extra_files=(),
        # Debian's dataset-fashion-mnist installs the four gzipped idx files here.
        gzip_ok=True, system_copies=('/usr/share/datasets/fashion-mnist',),
        source='http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/',
        reader=read_idx_sets, download=functools.partial(_download_train_flag, 'FashionMNIST'),
        write_fixture=fixtures.write_fashion_mnist),
    DatasetSpec(
        name='SVHN', index=4, input_shape=(3, 32, 32), n_class=10,
        mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
        augmentation=_svhn_augmentation, folder='',
        train_files=('train_32x32.mat',), test_files=('test_32x32.mat',), extra_files=(),
        gzip_ok=False, system_copies=(), source='http://ufldl.stanford.edu/housenumbers/',
        reader=read_svhn, download=functools.partial(_download_splits, 'SVHN'),
        write_fixture=fixtures.write_svhn,
        requires=(('scipy.io', "SVHN needs scipy to read its .mat files: pip install 'scipy>=1.10'"),)),
)
# name -> spec, in -d order (read-only).
DATASETS = types.MappingProxyType({spec.name: spec for spec in sorted(_SPECS, key=lambda s: s.index)})


def dataset_by_index(index):
    """The spec of ``-d index``; ValueError naming the choices for any other number."""
    for spec in DATASETS.values():
        if spec.index == index:
            return spec
    raise ValueError(f"no data set has number {index}; choose one of " +
                     ', '.join(f"{spec.index} ({spec.name})" for spec in DATASETS.values()))


def yaml_path(spec):
    """The experiment config of a data set: ``<project>/networks/<name>.yaml``."""
    name = spec if isinstance(spec, str) else spec.name
    return os.path.join(PROJECT_ROOT, 'networks', f'{name}.yaml')
