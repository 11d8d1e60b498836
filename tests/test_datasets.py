"""datasets/: the five data sets load from files in their real formats, with the published
transforms, exactly torchvision's normalisation, subsetting, and helpful errors."""
import dataclasses
import gzip
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

import datasets
import fixtures
from datasets import INPUT_SHAPES, N_CLASSES, NORMALISATION, DatasetNotFound, build_datasets
from datasets.idx import IdxImageDataset, read_idx

NAMES = ['MNIST', 'FashionMNIST', 'CIFAR10', 'CIFAR100', 'SVHN']
SYSTEM_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
# Folder each writer puts its files in under the directory it is given.
FIXTURE_FOLDER = {'CIFAR10': 'cifar-10-batches-py', 'CIFAR100': 'cifar-100-python'}


def write(name, directory, n_train, n_test):
    """Write fixtures of `name` into directory, in torchvision's layout."""
    if name in ('MNIST', 'FashionMNIST'):
        return fixtures.write_mnist_like(os.path.join(directory, name, 'raw'), n_train, n_test)
    writer = {'CIFAR10': fixtures.write_cifar10, 'CIFAR100': fixtures.write_cifar100, 'SVHN': fixtures.write_svhn}
    return writer[name](str(directory), n_train, n_test)


def reference(name, image):
    """torchvision's ToTensor + Normalize of a uint8 image [H, W] or [H, W, 3]."""
    mean, std = NORMALISATION[name]
    return T.Normalize(mean, std)(T.ToTensor()(Image.fromarray(image)))


def check_split(name, dataset, images, labels, augmented):
    """Sizes, types, labels and (without augmentation) exact values of every sample."""
    assert len(dataset) == len(labels)
    for i, (image, label) in enumerate(dataset):
        assert type(label) is int and label == labels[i]
        assert image.dtype == torch.float32 and tuple(image.shape) == INPUT_SHAPES[name]
        if not augmented:
            assert torch.equal(image, reference(name, images[i]))
    batch_images, batch_labels = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch_images.shape == (4,) + INPUT_SHAPES[name] and batch_labels.dtype == torch.int64


def without_system_copies(monkeypatch):
    monkeypatch.setattr(datasets, 'DATASETS', {name: dataclasses.replace(spec, system_copies=())
                                               for name, spec in datasets.DATASETS.items()})


@pytest.fixture
def offline(monkeypatch):
    """Make every URL fail at once, as on a machine without network."""
    calls = []

    def urlopen(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError('no network (test)')

    monkeypatch.setattr(urllib.request, 'urlopen', urlopen)
    return calls


def test_published_constants():
    assert INPUT_SHAPES == {'MNIST': (1, 28, 28), 'FashionMNIST': (1, 28, 28), 'CIFAR10': (3, 32, 32),
                            'CIFAR100': (3, 32, 32), 'SVHN': (3, 32, 32)}
    assert N_CLASSES == {'MNIST': 10, 'FashionMNIST': 10, 'CIFAR10': 10, 'CIFAR100': 100, 'SVHN': 10}
    assert NORMALISATION == {
        'MNIST': ((0.1307,), (0.3081,)),
        'FashionMNIST': ((0.2860,), (0.3530,)),
        'CIFAR10': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        'CIFAR100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        'SVHN': ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    }


@pytest.mark.parametrize('name', ['MNIST', 'FashionMNIST'])
@pytest.mark.parametrize('gz', [True, False])
@pytest.mark.parametrize('in_raw_folder', [True, False], ids=['torchvision-layout', 'files-in-data_path'])
def test_idx_sets_load(tmp_path, name, gz, in_raw_folder, offline):
    directory = tmp_path / name / 'raw' if in_raw_folder else tmp_path
    written = fixtures.write_mnist_like(str(directory), 30, 12, gz=gz)
    train_set, test_set = build_datasets(name, tmp_path)  # found, so no download is tried
    check_split(name, train_set, *written['train'], augmented=False)
    check_split(name, test_set, *written['test'], augmented=False)
    assert offline == []


@pytest.mark.parametrize('name', ['MNIST', 'FashionMNIST'])
def test_idx_lookup_matches_torchvision_for_every_pixel_value(name):
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    (mean,), (std,) = NORMALISATION[name]
    dataset = IdxImageDataset(torch.from_numpy(image)[None], torch.tensor([3]), mean, std)
    assert torch.equal(dataset[0][0], reference(name, image))


AUGMENTATION = {'CIFAR10': [T.RandomCrop, T.RandomHorizontalFlip],
                'CIFAR100': [T.RandomCrop, T.RandomHorizontalFlip, T.TrivialAugmentWide],
                'SVHN': [T.RandomCrop]}


@pytest.mark.parametrize('name', ['CIFAR10', 'CIFAR100', 'SVHN'])
def test_colour_sets_load_with_published_transforms(tmp_path, name, offline):
    written = write(name, tmp_path, 23, 9)
    train_set, test_set = build_datasets(name, tmp_path)
    assert offline == []
    # torchvision's own parsing read the files back exactly (its .data is HWC; SVHN's is CHW).
    for dataset, split in ((train_set, 'train'), (test_set, 'test')):
        data = dataset.data.transpose(0, 2, 3, 1) if name == 'SVHN' else dataset.data
        assert np.array_equal(data, written[split][0])
    check_split(name, train_set, *written['train'], augmented=True)
    check_split(name, test_set, *written['test'], augmented=False)

    mean, std = NORMALISATION[name]
    steps = train_set.transform.transforms
    assert [type(t) for t in steps] == AUGMENTATION[name] + [T.ToTensor, T.Normalize]
    assert steps[0].size == (32, 32) and steps[0].padding == 4
    assert [type(t) for t in test_set.transform.transforms] == [T.ToTensor, T.Normalize]
    for normalize in (steps[-1], test_set.transform.transforms[-1]):
        assert (normalize.mean, normalize.std) == (mean, std)


@pytest.mark.parametrize('name', ['CIFAR10', 'CIFAR100'])
def test_cifar_files_directly_in_data_path(tmp_path, name):
    written = write(name, tmp_path / 'unpacked', 10, 5)
    shutil.move(str(tmp_path / 'unpacked' / FIXTURE_FOLDER[name]), str(tmp_path / 'data'))
    train_set, test_set = build_datasets(name, tmp_path / 'data', download=False)
    assert [label for _, label in test_set] == written['test'][1].tolist()
    assert len(train_set) == 10


def test_svhn_label_10_is_digit_0(tmp_path):
    written = fixtures.write_svhn(str(tmp_path), 20, 10)
    from scipy.io import loadmat
    stored = loadmat(str(tmp_path / 'train_32x32.mat'))['y'].ravel()
    assert 10 in stored and 0 not in stored
    train_set, _ = build_datasets('SVHN', tmp_path, download=False)
    assert sorted(set(train_set.labels.tolist())) == list(range(10))
    assert train_set.labels.tolist() == written['train'][1].tolist()


def test_relative_data_path_is_relative_to_current_directory(tmp_path, monkeypatch):
    written = fixtures.write_mnist_like(str(tmp_path / 'data'), 5, 3, gz=False)
    monkeypatch.chdir(tmp_path)
    _, test_set = build_datasets('MNIST', './data', download=False)
    assert [label for _, label in test_set] == written['test'][1].tolist()


@pytest.mark.parametrize('name', NAMES)
def test_keep_first_samples(tmp_path, name):
    written = write(name, tmp_path, 20, 10)
    train_set, test_set = build_datasets(name, tmp_path, train_samples=7, test_samples=3, download=False)
    assert len(train_set) == 7 and len(test_set) == 3
    assert [label for _, label in train_set] == written['train'][1][:7].tolist()
    assert [label for _, label in test_set] == written['test'][1][:3].tolist()
    # More samples than there are keeps them all.
    train_set, test_set = build_datasets(name, tmp_path, train_samples=1000, download=False)
    assert (len(train_set), len(test_set)) == (20, 10)


@pytest.mark.parametrize('samples', [0, -1])
def test_bad_arguments(tmp_path, samples):
    with pytest.raises(ValueError, match='train_samples'):
        build_datasets('MNIST', tmp_path, train_samples=samples)
    with pytest.raises(ValueError, match='unknown data set'):
        build_datasets('mnist', tmp_path)


@pytest.mark.parametrize('name', NAMES)
def test_missing_data_without_download(tmp_path, name, monkeypatch, offline):
    without_system_copies(monkeypatch)  # this machine may hold Fashion-MNIST
    data_path = str(tmp_path / 'data')
    with pytest.raises(DatasetNotFound) as info:
        build_datasets(name, data_path, download=False)
    message = str(info.value)
    assert offline == []
    assert name in message and data_path in message and 'download=False' in message
    assert '\n' not in message  # a user error is one line
    for file_name in datasets.DATASETS[name].files:
        assert (file_name + '.gz' if name in ('MNIST', 'FashionMNIST') else file_name) in message
    assert not os.path.exists(data_path)  # nothing written


@pytest.mark.parametrize('name', NAMES)
def test_missing_data_with_failing_download(tmp_path, name, monkeypatch, offline):
    without_system_copies(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(DatasetNotFound, match='no network') as info:
        build_datasets(name, tmp_path, download=True)
    assert time.perf_counter() - start < 5
    assert offline  # the download was really tried
    assert isinstance(info.value.__cause__, (RuntimeError, OSError))
    assert socket.getdefaulttimeout() is None  # the download's timeout was undone


def test_partial_files_are_reported(tmp_path):
    write('CIFAR10', tmp_path, 10, 5)
    os.remove(tmp_path / 'cifar-10-batches-py' / 'data_batch_3')
    with pytest.raises(DatasetNotFound, match=r'cifar-10-batches-py \(missing data_batch_3\)'):
        build_datasets('CIFAR10', tmp_path, download=False)


def test_svhn_without_scipy(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'scipy', None)  # makes `import scipy...` raise ImportError
    monkeypatch.setitem(sys.modules, 'scipy.io', None)
    with pytest.raises(ImportError, match=r'scipy>=1\.10'):
        build_datasets('SVHN', tmp_path)


def test_corrupt_idx_file(tmp_path):
    fixtures.write_mnist_like(str(tmp_path), 5, 3, gz=False)
    path = str(tmp_path / 'train-images-idx3-ubyte')
    with open(path, 'r+b') as f:
        f.truncate(100)
    with pytest.raises(ValueError, match='truncated or corrupt'):
        read_idx(path)
    with open(path, 'wb') as f:
        f.write(b'not idx')
    with pytest.raises(ValueError, match='not an idx file'):
        read_idx(path)


@pytest.mark.skipif(not os.path.isdir(SYSTEM_FASHION_MNIST), reason='Debian package dataset-fashion-mnist not installed')
def test_system_fashion_mnist_matches_torchvision(tmp_path):
    data_path = tmp_path / 'empty'
    train_set, test_set = build_datasets('FashionMNIST', data_path, download=False)
    assert (len(train_set), len(test_set)) == (60000, 10000)
    assert not data_path.exists()  # read in place, nothing cached

    # torchvision's own FashionMNIST, on uncompressed copies in its layout.
    raw = tmp_path / 'tv' / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True)
    for file_name in os.listdir(SYSTEM_FASHION_MNIST):
        with gzip.open(os.path.join(SYSTEM_FASHION_MNIST, file_name)) as src, \
                open(raw / file_name[:-len('.gz')], 'wb') as dst:
            shutil.copyfileobj(src, dst)
    mean, std = NORMALISATION['FashionMNIST']
    transform = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    for ours, split in ((train_set, True), (test_set, False)):
        theirs = tvd.FashionMNIST(str(tmp_path / 'tv'), train=split, transform=transform)
        assert torch.equal(ours.data, theirs.data) and torch.equal(ours.targets, theirs.targets)
        for i in (0, 1, 4321, len(theirs) - 1):
            image, label = ours[i]
            expected_image, expected_label = theirs[i]
            assert torch.equal(image, expected_image) and label == expected_label
    assert sorted(set(train_set.targets.tolist())) == list(range(N_CLASSES['FashionMNIST']))
