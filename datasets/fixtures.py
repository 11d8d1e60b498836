"""Tiny data sets written in the real on-disk formats that torchvision (and datasets/) read,
for tests (each data set's writer is its registry entry's ``write_fixture``).

Images are deterministic (seeded) and depend on the label so that a small network can
learn them: grey-scale images carry a bright square at a class-specific position,
colour images a class-specific colour (which survives random crops and flips).

Every writer returns {'train': (images, labels), 'test': (images, labels)} as numpy
arrays the way the loaded data set exposes them: uint8 images [N, H, W] (grey) or
[N, H, W, 3] (colour), int64 labels in 0..n_classes-1.
"""
import gzip
import math
import os
import pickle

import numpy as np

CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def _labels(rng, n, n_classes):
    """n labels, as balanced as n allows, in random order."""
    return rng.permutation(np.arange(n) % n_classes).astype(np.int64)


def _grey_images(rng, labels, n_classes, size=28):
    """Dark noise with a bright square in the label's cell of a ceil(sqrt(n_classes))^2 grid."""
    images = rng.integers(0, 60, size=(len(labels), size, size), dtype=np.uint8)
    grid = math.ceil(math.sqrt(n_classes))
    cell = size // grid
    for image, label in zip(images, labels):
        row, col = divmod(int(label), grid)
        patch = image[row * cell:(row + 1) * cell - 1, col * cell:(col + 1) * cell - 1]
        patch[...] = rng.integers(200, 256, size=patch.shape, dtype=np.uint8)
    return images


def _colour_images(rng, labels, n_classes, size=32):
    """Noisy images of one colour per class: the label's digits in base b pick one of b
    levels in each of R, G and B (b = ceil(cube root of n_classes), 3 for 10 classes)."""
    base = 2
    while base ** 3 < n_classes:
        base += 1
    levels = np.linspace(30, 225, base)
    colours = np.array([[levels[(c // base ** k) % base] for k in range(3)] for c in range(n_classes)])
    noise = rng.integers(-20, 21, size=(len(labels), size, size, 3))
    return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _colour_splits(seed, n_train, n_test, n_classes):
    """{'train': (images, labels), 'test': ...} of colour images, drawn in that order."""
    rng = np.random.default_rng(seed)
    result = {}
    for split, n in (('train', n_train), ('test', n_test)):
        labels = _labels(rng, n, n_classes)
        result[split] = (_colour_images(rng, labels, n_classes), labels)
    return result


def _write_idx(path, array, gz):
    """idx format: 0, 0, type code 0x08 (uint8), ndim, big-endian int32 sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype='>i4').tobytes()
    opener = gzip.open if gz else open
    with opener(path + ('.gz' if gz else ''), 'wb') as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist_like(directory, n_train, n_test, gz=True, seed=0):
    """Write {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (10 classes, 28x28) into directory."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    result = {}
    for split, prefix, n in (('train', 'train', n_train), ('test', 't10k', n_test)):
        labels = _labels(rng, n, 10)
        images = _grey_images(rng, labels, 10)
        _write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte'), images, gz)
        _write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte'), labels.astype(np.uint8), gz)
        result[split] = (images, labels)
    return result


def write_mnist(data_path, n_train, n_test, seed=0, gz=True):
    """MNIST fixture in torchvision's layout: data_path/MNIST/raw/<idx files>."""
    return write_mnist_like(os.path.join(data_path, 'MNIST', 'raw'), n_train, n_test, gz=gz, seed=seed)


def write_fashion_mnist(data_path, n_train, n_test, seed=0, gz=True):
    """FashionMNIST fixture in torchvision's layout: data_path/FashionMNIST/raw/<idx files>."""
    return write_mnist_like(os.path.join(data_path, 'FashionMNIST', 'raw'), n_train, n_test, gz=gz,
                            seed=seed)


def _cifar_rows(images):
    """CIFAR's row format: each image as 3072 bytes, the R, G and B planes in row-major order."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _pickle(path, obj):
    with open(path, 'wb') as f:
        pickle.dump(obj, f, protocol=2)  # the official files are Python 2 pickles


def write_cifar10(directory, n_train, n_test, seed=0):
    """Write cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} under directory.

    The training samples are split over the five batches in order (torchvision
    concatenates them), so the returned train arrays match the loaded order.
    """
    folder = os.path.join(directory, 'cifar-10-batches-py')
    os.makedirs(folder, exist_ok=True)
    result = _colour_splits(seed, n_train, n_test, 10)
    images, labels = result['train']
    for i, index in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        _pickle(os.path.join(folder, f'data_batch_{i}'), {
            'batch_label': f'training batch {i} of 5', 'labels': labels[index].tolist(),
            'data': _cifar_rows(images[index]), 'filenames': [f'train_{j}.png' for j in index]})
    images, labels = result['test']
    _pickle(os.path.join(folder, 'test_batch'), {
        'batch_label': 'testing batch 1 of 1', 'labels': labels.tolist(),
        'data': _cifar_rows(images), 'filenames': [f'test_{j}.png' for j in range(n_test)]})
    _pickle(os.path.join(folder, 'batches.meta'),
            {'label_names': CIFAR10_CLASSES, 'num_cases_per_batch': max(n_train // 5, 1), 'num_vis': 3072})
    return result


def write_cifar100(directory, n_train, n_test, seed=0):
    """Write cifar-100-python/{train, test, meta} under directory.

    Coarse labels are fine // 5 (the real grouping is not needed by anything here).
    """
    folder = os.path.join(directory, 'cifar-100-python')
    os.makedirs(folder, exist_ok=True)
    result = _colour_splits(seed, n_train, n_test, 100)
    for split, (images, labels) in result.items():
        _pickle(os.path.join(folder, split), {
            'batch_label': f'{split}ing batch 1 of 1', 'fine_labels': labels.tolist(),
            'coarse_labels': (labels // 5).tolist(), 'data': _cifar_rows(images),
            'filenames': [f'{split}_{j}.png' for j in range(len(labels))]})
    _pickle(os.path.join(folder, 'meta'), {'fine_label_names': [f'class_{c}' for c in range(100)],
                                           'coarse_label_names': [f'superclass_{c}' for c in range(20)]})
    return result


def write_svhn(directory, n_train, n_test, seed=0):
    """Write train_32x32.mat and test_32x32.mat into directory (needs scipy).

    As in the real files, X is uint8 [32, 32, 3, N] and y is uint8 [N, 1] with the digit 0
    stored as label 10; the returned labels are 0..9, as torchvision serves them.
    """
    from scipy.io import savemat
    os.makedirs(directory, exist_ok=True)
    result = _colour_splits(seed, n_train, n_test, 10)
    for split, (images, labels) in result.items():
        savemat(os.path.join(directory, f'{split}_32x32.mat'),
                {'X': images.transpose(1, 2, 3, 0), 'y': np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]})
    return result
