"""MNIST-type data (the idx file format) read straight into memory.

torchvision's MNIST class needs uncompressed files under ``root/<ClassName>/raw`` and
turns every sample into a PIL image before ToTensor + Normalize.  Reading the idx files
ourselves lets us use gzipped files where they lie (e.g. read-only system copies) and
serve normalised tensors without the per-sample PIL round trip.
"""
import gzip
import math
import zlib

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataFileError

_UNSIGNED_BYTE = 0x08  # idx type code of uint8 data, the only type MNIST-type files use


def read_idx(path):
    """Read an idx file (gzipped if the name ends in '.gz') into a uint8 tensor.

    Layout: two zero bytes, the type code, the number of dimensions n, then n big-endian
    int32 sizes, then the data in row-major order.  A file that is not exactly this (or not
    valid gzip) raises DataFileError naming the file and what is wrong.
    """
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            raw = f.read()
    except gzip.BadGzipFile:
        raise DataFileError(f'{path}: not a gzip file (the name ends in .gz)') from None
    except (EOFError, zlib.error) as error:
        raise DataFileError(f'{path}: truncated or corrupt gzip data ({error})') from None
    except OSError as error:
        raise DataFileError(f'{path}: cannot be read ({error.strerror or error})') from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UNSIGNED_BYTE:
        raise DataFileError(f'{path}: not an idx file of unsigned bytes (magic number '
                           f'{raw[:4].hex() or "missing"}, expected 000008xx)')
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f'{path}: header announces {ndim} dimensions but the file ends after '
                           f'{len(raw)} bytes (truncated or corrupt file?)')
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype='>i4', count=ndim, offset=4))
    # Python ints: a crafted header's product must not overflow into a plausible size.
    expected = math.prod(shape)
    if min(shape, default=0) < 0 or expected != len(raw) - header:
        raise DataFileError(f'{path}: header announces shape {list(shape)} but the file holds '
                           f'{len(raw) - header} values (truncated or corrupt file?)')
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    # copy: frombuffer over immutable bytes gives a read-only array, which torch warns about.
    return torch.from_numpy(data.reshape(shape).copy())


def read_idx_split(images_path, labels_path, image_size, n_class):
    """(uint8 images [N, H, W], uint8 labels [N]) of one split, checked against each other and
    against the data set (image size, labels in 0..n_class-1, at least one sample)."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dim() != 3 or tuple(images.shape[1:]) != tuple(image_size):
        raise DataFileError(f'{images_path}: expected images [N, {image_size[0]}, {image_size[1]}], '
                           f'the header says {list(images.shape)}')
    if labels.dim() != 1:
        raise DataFileError(f'{labels_path}: expected labels [N], the header says {list(labels.shape)}')
    if len(labels) != len(images):
        raise DataFileError(f'{labels_path}: {len(labels)} labels for the {len(images)} images of '
                           f'{images_path}')
    if len(images) == 0:
        raise DataFileError(f'{images_path}: holds no samples')
    bad = labels >= n_class  # uint8: never negative
    if bad.any():
        index = int(bad.nonzero()[0, 0])
        raise DataFileError(f'{labels_path}: label {int(labels[index])} (sample {index}) is outside '
                           f'0..{n_class - 1}')
    return images, labels


def read_idx_sets(spec, directory):
    """(train_set, test_set) of an idx data set (MNIST, FashionMNIST) from `directory`.

    The samples are ToTensor + Normalize of the images, exactly; augmentation is not supported
    (none of the idx data sets has one).
    """
    if spec.augmentation is not None:
        raise ValueError(f'{spec.name}: the idx reader serves images without augmentation')
    (mean,), (std,) = spec.mean, spec.std

    def split(files):
        images, labels = read_idx_split(*(spec.path_of(directory, f) for f in files),
                                        spec.input_shape[1:], spec.n_class)
        return IdxImageDataset(images, labels, mean, std)

    return split(spec.train_files), split(spec.test_files)


class IdxImageDataset(Dataset):
    """Grey-scale uint8 images and labels held in memory.

    Yields (float32 tensor [1, H, W], int label), bit-identical to torchvision's
    ToTensor() followed by Normalize((mean,), (std,)) applied to the same image.
    Those compute v / 255 and then (x - mean) / std in float32 for every uint8 pixel value
    v; each output pixel depends on its own value only, so the 256 possible results are
    computed once with the same float32 operations and looked up per sample.
    """

    def __init__(self, images, labels, mean, std):
        if images.dtype != torch.uint8 or images.dim() != 3:
            raise ValueError(f'expected uint8 images [N, H, W], got {images.dtype} {tuple(images.shape)}')
        if labels.shape != images.shape[:1]:
            raise ValueError(f'{images.shape[0]} images but labels of shape {tuple(labels.shape)}')
        self.data = images
        self.targets = labels.long()
        pixel_values = torch.arange(256, dtype=torch.uint8).to(torch.float32).div(255)  # ToTensor
        self.lookup = pixel_values.sub(torch.tensor(mean, dtype=torch.float32)).div(
            torch.tensor(std, dtype=torch.float32))  # Normalize

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        # .long(): indexing with a uint8 tensor would be read as a boolean mask.
        return self.lookup[self.data[index].long()].unsqueeze(0), int(self.targets[index])
