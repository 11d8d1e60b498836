"""Bad data files: a crafted pickle runs no code, and every malformed file or empty data set is a
one-line DataFileError naming the file (exit status 2 from main, before training starts).
Also the registry: one entry per data set, and readers bit-identical to torchvision's."""
import dataclasses
import gzip
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from conftest import ROOT
from errors import UserError
from datasets import (DATASETS, INPUT_SHAPES, N_CLASSES, NORMALISATION, DataFileError, DatasetNotFound,
                      build_datasets, dataset_by_index, yaml_path)
from datasets.fixtures import _pickle, _write_idx
from datasets.safe_pickle import load_data_pickle


def load(name, data_path, **kwargs):
    return build_datasets(name, data_path, download=False, **kwargs)


def assert_refused(name, data_path, bad_file, *words):
    """Loading raises DataFileError with one line naming bad_file and containing every word."""
    with pytest.raises(DataFileError) as info:
        load(name, data_path)
    message = str(info.value)
    assert '\n' not in message and str(bad_file) in message, message
    for word in words:
        assert word in message, message
    return message


# ---------------------------------------------------------------- pickles that would run code

class _CreatesFile:
    """Unpickling this object creates `marker` (builtins.open or os.system, via __reduce__)."""

    def __init__(self, marker, how):
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == 'open':
            return (open, (self.marker, 'w'))
        return (os.system, (f'touch {self.marker}',))


def write_crafted_cifar10(data_path, marker, how):
    """A valid CIFAR-10 fixture whose first batch also holds an object that creates `marker`."""
    DATASETS['CIFAR10'].write_fixture(str(data_path), 10, 5)
    batch = data_path / 'cifar-10-batches-py' / 'data_batch_1'
    with open(batch, 'rb') as f:
        entry = pickle.load(f, encoding='latin1')  # our own fixture: safe to load
    entry['payload'] = _CreatesFile(str(marker), how)
    _pickle(str(batch), entry)
    return batch


@pytest.mark.parametrize('how', ['open', 'system'])
def test_crafted_cifar_batch_runs_no_code(tmp_path, how):
    marker = tmp_path / 'marker'
    batch = write_crafted_cifar10(tmp_path, marker, how)
    # The file is effective: plain pickle.load (as torchvision's CIFAR10 does) creates the marker.
    with open(batch, 'rb') as f:
        pickle.load(f, encoding='latin1')
    assert marker.exists()
    marker.unlink()

    module = f'{open.__module__}.open' if how == 'open' else f'{os.system.__module__}.system'
    assert_refused('CIFAR10', tmp_path, batch, 'refusing to unpickle', module)
    assert not marker.exists()


def test_crafted_cifar_batch_exits_2_from_main(tmp_path, capsys):
    import main
    marker = tmp_path / 'marker'
    batch = write_crafted_cifar10(tmp_path / 'data', marker, 'open')
    code = main.main(['-d', '1', '--out', str(tmp_path / 'run'), '--set', f'Network.data_path={tmp_path / "data"}',
                      '--set', 'Network.epochs=1'])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count('\n') == 1 and str(batch) in err and 'refusing to unpickle' in err, err
    assert not marker.exists()
    assert not os.path.exists(tmp_path / 'run' / 'last.pth')  # no training started


@pytest.mark.parametrize('protocol', [2, 3, 4, 5])
def test_safe_unpickler_reads_every_protocol(tmp_path, protocol):
    data = np.arange(3 * 3072, dtype=np.uint8).reshape(3, 3072)
    obj = {'data': data, 'labels': [1, 2, 3], 'name': 'batch', 'raw': b'\x00\xff', 'empty': b'',
           'scalar': np.int64(7), 'numbers': (1.5, None, True), 'set': {1, 2}}
    path = tmp_path / 'batch'
    with open(path, 'wb') as f:
        pickle.dump(obj, f, protocol=protocol)
    loaded = load_data_pickle(str(path))
    assert np.array_equal(loaded.pop('data'), obj.pop('data')) and loaded == obj


def test_safe_unpickler_reads_python2_numpy_pickles(tmp_path):
    """The official CIFAR files were written by Python 2 and numpy 1: globals under numpy.core,
    the array's bytes as a Python 2 str (read back as latin-1 text)."""
    raw = bytes([0, 1, 127, 128, 200, 255])
    py2 = (b'\x80\x02}q\x00U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03'
           b'K\x00\x85U\x01b\x87Rq\x04(K\x01K\x02K\x03\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R'
           b'(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x06' + raw + b'tbs.')
    path = tmp_path / 'py2_batch'
    path.write_bytes(py2)
    loaded = load_data_pickle(str(path))
    assert loaded['data'].dtype == np.uint8 and loaded['data'].tolist() == [[0, 1, 127], [128, 200, 255]]


@pytest.mark.parametrize('payload', [
    b'\x80\x02cposix\nsystem\nU\x04trueq\x00\x85R.',                      # os.system
    b'\x80\x02c__builtin__\neval\nU\x011\x85R.',                          # eval, Python 2 name
    b'\x80\x02c_codecs\nencode\nU\x01aU\x05rot13\x86R.',                 # a codec other than latin-1
    b'\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.',              # bytes(1 GiB)
    b'\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x8c\x07getattr\x93.',
])
def test_safe_unpickler_refuses_everything_else(tmp_path, payload):
    path = tmp_path / 'evil'
    path.write_bytes(payload)
    with pytest.raises(DataFileError) as info:
        load_data_pickle(str(path))
    assert str(path) in str(info.value) and '\n' not in str(info.value)


# ---------------------------------------------------------------- malformed idx files

def mnist(tmp_path, gz=False, n_train=12, n_test=5):
    return DATASETS['MNIST'].write_fixture(str(tmp_path), n_train, n_test, gz=gz)


def idx_path(tmp_path, stem, gz=False):
    return tmp_path / 'MNIST' / 'raw' / (stem + ('.gz' if gz else ''))


def test_truncated_idx(tmp_path):
    mnist(tmp_path)
    path = idx_path(tmp_path, 'train-images-idx3-ubyte')
    with open(path, 'r+b') as f:
        f.truncate(100)
    assert_refused('MNIST', tmp_path, path, 'truncated or corrupt')


@pytest.mark.parametrize('content', [b'\x00\x00\x09\x03' + b'\x00' * 12, b'PK\x03\x04zip', b''])
def test_wrong_magic(tmp_path, content):
    mnist(tmp_path)
    path = idx_path(tmp_path, 't10k-labels-idx1-ubyte')
    path.write_bytes(content)
    assert_refused('MNIST', tmp_path, path, 'not an idx file')


@pytest.mark.parametrize('header', [
    bytes([0, 0, 8, 3]) + np.array([2**31 - 1] * 3, '>i4').tobytes(),  # dims far beyond the file
    bytes([0, 0, 8, 3]) + np.array([65536, 65536, 65536], '>i4').tobytes(),  # 2**48 values claimed
    bytes([0, 0, 8, 3]) + np.array([-1, 28, 28], '>i4').tobytes(),  # negative size
    bytes([0, 0, 8, 200]) + b'\x00' * 8,  # 200 dimensions, header cut short
])
def test_huge_or_broken_header(tmp_path, header):
    mnist(tmp_path)
    path = idx_path(tmp_path, 'train-images-idx3-ubyte')
    path.write_bytes(header + b'\x00' * 784)
    assert_refused('MNIST', tmp_path, path)


def test_label_count_differs_from_image_count(tmp_path):
    mnist(tmp_path)
    path = idx_path(tmp_path, 'train-labels-idx1-ubyte')
    _write_idx(str(path), np.zeros(11, np.uint8), gz=False)
    assert_refused('MNIST', tmp_path, path, '11 labels', '12 images')


def test_wrong_image_size(tmp_path):
    mnist(tmp_path)
    path = idx_path(tmp_path, 'train-images-idx3-ubyte')
    _write_idx(str(path), np.zeros((12, 32, 32), np.uint8), gz=False)
    assert_refused('MNIST', tmp_path, path, '[12, 32, 32]', '28')


def test_labels_file_with_images_shape(tmp_path):
    mnist(tmp_path)
    path = idx_path(tmp_path, 'train-labels-idx1-ubyte')
    _write_idx(str(path), np.zeros((12, 2), np.uint8), gz=False)
    assert_refused('MNIST', tmp_path, path, 'expected labels [N]')


def test_truncated_gz(tmp_path):
    mnist(tmp_path, gz=True)
    path = idx_path(tmp_path, 'train-images-idx3-ubyte', gz=True)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    assert_refused('MNIST', tmp_path, path, 'gzip')


def test_non_gzip_named_gz(tmp_path):
    mnist(tmp_path, gz=True)
    path = idx_path(tmp_path, 't10k-images-idx3-ubyte', gz=True)
    with gzip.open(path) as f:
        plain = f.read()
    path.write_bytes(plain)  # the uncompressed idx data under the .gz name
    assert_refused('MNIST', tmp_path, path, 'not a gzip file')


def test_label_out_of_range(tmp_path):
    mnist(tmp_path)
    path = idx_path(tmp_path, 't10k-labels-idx1-ubyte')
    labels = np.array([1, 2, 200, 3, 4], np.uint8)
    _write_idx(str(path), labels, gz=False)
    assert_refused('MNIST', tmp_path, path, 'label 200', 'sample 2', '0..9')


def test_empty_idx_files(tmp_path):
    mnist(tmp_path)
    images = idx_path(tmp_path, 't10k-images-idx3-ubyte')
    _write_idx(str(images), np.zeros((0, 28, 28), np.uint8), gz=False)
    _write_idx(str(idx_path(tmp_path, 't10k-labels-idx1-ubyte')), np.zeros(0, np.uint8), gz=False)
    assert_refused('MNIST', tmp_path, images, 'no samples')


# ---------------------------------------------------------------- malformed CIFAR files

def rewrite_batch(path, change):
    """Apply change(entry) (it edits the dict in place) to one of our fixture's pickles."""
    with open(path, 'rb') as f:
        entry = pickle.load(f, encoding='latin1')  # our own fixture: safe to load
    change(entry)
    _pickle(str(path), entry)


@pytest.mark.parametrize('name,file_name,change,words', [
    ('CIFAR10', 'data_batch_2', lambda e: e.pop('labels'), ["missing key 'labels'"]),
    ('CIFAR100', 'train', lambda e: e.pop('data'), ["missing key 'data'"]),
    ('CIFAR10', 'test_batch', lambda e: e.update(data=e['data'][:, :1000]), ['[N, 3072]', '[5, 1000]']),
    ('CIFAR10', 'data_batch_1', lambda e: e.update(data=e['data'].astype(np.float32)), ['float32']),
    ('CIFAR10', 'data_batch_1', lambda e: e.update(data='pixels'), ['found str']),
    ('CIFAR10', 'data_batch_5', lambda e: e['labels'].__setitem__(1, 10), ['label 10 (sample 1)', '0..9']),
    ('CIFAR100', 'test', lambda e: e['fine_labels'].__setitem__(0, -1), ['label -1', '0..99']),
    ('CIFAR10', 'test_batch', lambda e: e['labels'].pop(), ['5 images but 4 labels']),
    ('CIFAR10', 'test_batch', lambda e: e.update(labels=['cat'] * 5), ['list of ints']),
    ('CIFAR10', 'batches.meta', lambda e: e.pop('label_names'), ["missing key 'label_names'"]),
    ('CIFAR100', 'meta', lambda e: e.update(fine_label_names=['a']), ['100 class names']),
])
def test_malformed_cifar_batch(tmp_path, name, file_name, change, words):
    DATASETS[name].write_fixture(str(tmp_path), 10, 5)
    path = tmp_path / DATASETS[name].folder / file_name
    rewrite_batch(path, change)
    assert_refused(name, tmp_path, path, *words)


def test_cifar_batch_that_is_not_a_dict(tmp_path):
    DATASETS['CIFAR10'].write_fixture(str(tmp_path), 10, 5)
    path = tmp_path / 'cifar-10-batches-py' / 'data_batch_3'
    _pickle(str(path), [1, 2, 3])
    assert_refused('CIFAR10', tmp_path, path, 'expected a dict', 'list')


def test_truncated_cifar_batch(tmp_path):
    DATASETS['CIFAR10'].write_fixture(str(tmp_path), 10, 5)
    path = tmp_path / 'cifar-10-batches-py' / 'test_batch'
    path.write_bytes(path.read_bytes()[:500])
    assert_refused('CIFAR10', tmp_path, path, 'not a readable data pickle')


def test_empty_cifar_split(tmp_path):
    DATASETS['CIFAR10'].write_fixture(str(tmp_path), 10, 5)
    folder = tmp_path / 'cifar-10-batches-py'
    rewrite_batch(folder / 'test_batch', lambda e: e.update(data=e['data'][:0], labels=[]))
    assert_refused('CIFAR10', tmp_path, folder, 'test_batch hold no samples')


# ---------------------------------------------------------------- malformed SVHN files

@pytest.mark.parametrize('content,words', [
    (dict(images=np.zeros((32, 32, 3, 2), np.uint8), y=np.ones((2, 1), np.uint8)), ["missing variable 'X'", "'images'"]),
    (dict(X=np.zeros((28, 28, 1, 2), np.uint8), y=np.ones((2, 1), np.uint8)), ['[32, 32, 3, N]', '[28, 28, 1, 2]']),
    (dict(X=np.zeros((32, 32, 3, 2), np.float64), y=np.ones((2, 1), np.uint8)), ['float64']),
    (dict(X=np.zeros((32, 32, 3, 2), np.uint8), y=np.ones((3, 1), np.uint8)), ["'y' must hold 2 labels"]),
    (dict(X=np.zeros((32, 32, 3, 2), np.uint8), y=np.array([[1], [11]], np.uint8)), ['label 11 (sample 1)']),
    (dict(X=np.zeros((32, 32, 3, 0), np.uint8), y=np.zeros((0, 1), np.uint8)), ['no samples']),
])
def test_malformed_svhn_mat(tmp_path, content, words):
    from scipy.io import savemat
    DATASETS['SVHN'].write_fixture(str(tmp_path), 10, 5)
    path = tmp_path / 'test_32x32.mat'
    savemat(str(path), content)
    assert_refused('SVHN', tmp_path, path, *words)


def test_svhn_file_that_is_not_mat(tmp_path):
    DATASETS['SVHN'].write_fixture(str(tmp_path), 10, 5)
    path = tmp_path / 'train_32x32.mat'
    path.write_bytes(pickle.dumps({'X': 1}))
    assert_refused('SVHN', tmp_path, path, 'not a readable MATLAB file')


# ---------------------------------------------------------------- end to end

def test_bad_label_exits_2_before_training(tmp_path, capsys):
    import main
    mnist(tmp_path / 'data')
    path = idx_path(tmp_path / 'data', 'train-labels-idx1-ubyte')
    _write_idx(str(path), np.full(12, 200, np.uint8), gz=False)
    code = main.main(['-d', '0', '--out', str(tmp_path / 'run'), '--set', f'Network.data_path={tmp_path / "data"}',
                      '--set', 'Network.ckpt_v=null', '--set', 'Network.epochs=1'])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count('\n') == 1 and err.startswith('error: ') and str(path) in err and 'label 200' in err, err
    assert not os.path.exists(tmp_path / 'run' / 'last.pth')


# ---------------------------------------------------------------- the registry

def test_registry_entries():
    assert [(spec.index, name) for name, spec in DATASETS.items()] == [
        (0, 'MNIST'), (1, 'CIFAR10'), (2, 'CIFAR100'), (3, 'FashionMNIST'), (4, 'SVHN')]
    for name, spec in DATASETS.items():
        assert spec.name == name and dataset_by_index(spec.index) is spec
        assert os.path.isfile(yaml_path(spec)) and yaml_path(spec) == os.path.join(ROOT, 'networks', f'{name}.yaml')
        assert len(spec.mean) == len(spec.std) == spec.input_shape[0]
        assert (INPUT_SHAPES[name], N_CLASSES[name], NORMALISATION[name]) == (
            spec.input_shape, spec.n_class, (spec.mean, spec.std))
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.n_class = 3
    with pytest.raises(ValueError, match='0 .MNIST.*4 .SVHN.'):
        dataset_by_index(5)
    with pytest.raises(TypeError):
        DATASETS['MNIST'] = None  # read-only


@pytest.mark.parametrize('name', list(DATASETS))
def test_write_fixture_round_trip(tmp_path, name):
    spec = DATASETS[name]
    written = spec.write_fixture(str(tmp_path), 7, 4, seed=3)
    train_set, test_set = load(name, tmp_path)
    for dataset, split in ((train_set, 'train'), (test_set, 'test')):
        labels = [label for _, label in dataset]
        assert labels == written[split][1].tolist() and max(labels) < spec.n_class
        assert tuple(dataset[0][0].shape) == spec.input_shape


def test_importing_datasets_needs_no_torchvision():
    code = 'import sys, datasets; assert "torchvision" not in sys.modules, "torchvision imported"'
    subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True)


def test_data_errors_are_user_errors():
    assert issubclass(DataFileError, UserError) and issubclass(DataFileError, ValueError)
    assert issubclass(DatasetNotFound, UserError)


# ---------------------------------------------------------------- same samples as torchvision

class _TorchvisionMd5Skipped:
    """torchvision's classes, with the md5 check of the official files reduced to existence."""
    base_folder = ''

    def _check_integrity(self):
        return True


class _TvCIFAR10(_TorchvisionMd5Skipped, tvd.CIFAR10):
    meta = {**tvd.CIFAR10.meta, 'md5': None}


class _TvCIFAR100(_TorchvisionMd5Skipped, tvd.CIFAR100):
    meta = {**tvd.CIFAR100.meta, 'md5': None}


class _TvSVHN(_TorchvisionMd5Skipped, tvd.SVHN):
    pass


@pytest.mark.parametrize('name', ['CIFAR10', 'CIFAR100', 'SVHN'])
def test_colour_sets_bit_identical_to_torchvision(tmp_path, name):
    spec = DATASETS[name]
    spec.write_fixture(str(tmp_path), 11, 6)
    ours = load(name, tmp_path)
    root = str(tmp_path / spec.folder)
    for train, dataset in zip((True, False), ours):
        transform = spec.transform(train)
        if name == 'SVHN':
            theirs = _TvSVHN(root, split='train' if train else 'test', transform=transform)
            assert np.array_equal(dataset.labels, theirs.labels) and dataset.labels.dtype == theirs.labels.dtype
        else:
            theirs = {'CIFAR10': _TvCIFAR10, 'CIFAR100': _TvCIFAR100}[name](root, train=train, transform=transform)
            assert dataset.targets == theirs.targets and dataset.classes == theirs.classes
        assert np.array_equal(dataset.data, theirs.data) and dataset.data.strides == theirs.data.strides
        for i in range(len(theirs)):
            torch.manual_seed(i)  # the same random augmentation for both
            image, label = dataset[i]
            torch.manual_seed(i)
            expected_image, expected_label = theirs[i]
            assert torch.equal(image, expected_image) and type(label) is type(expected_label) and label == expected_label
