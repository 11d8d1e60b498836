"""SVHN read from its MATLAB files (train_32x32.mat, test_32x32.mat), checked.

scipy.io.loadmat only parses data (no pickle, no code), so the safety question is only that
of malformed files: every file is checked (keys, shapes, dtypes, label range) and served
like torchvision's SVHN: ``.data`` uint8 [N, 3, 32, 32], ``.labels`` int64 with the digit 0
stored as label 10 mapped to 0, samples as ``transform(PIL image), int label``.
"""
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .errors import DataFileError


class SVHNDataset(Dataset):
    def __init__(self, data, labels, transform=None):
        self.data = data
        self.labels = labels
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        image, target = self.data[index], int(self.labels[index])
        image = Image.fromarray(np.transpose(image, (1, 2, 0)))
        if self.transform is not None:
            image = self.transform(image)
        return image, target


def read_mat(path, n_class):
    """(uint8 images [N, 3, 32, 32], int64 labels [N] in 0..n_class-1) of one SVHN .mat file."""
    from scipy.io import loadmat
    try:
        loaded = loadmat(path)
    # scipy reports a malformed file in many ways (MatReadError, ValueError, TypeError, OSError,
    # NotImplementedError for MATLAB 7.3 / HDF5 files, ...): all mean "not a usable SVHN file".
    except Exception as error:  # noqa: BLE001
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataFileError(f'{path}: not a readable MATLAB file ({detail})') from None
    missing = [key for key in ('X', 'y') if key not in loaded]
    if missing:
        found = ', '.join(repr(k) for k in loaded if not k.startswith('__')) or 'no variables'
        raise DataFileError(f"{path}: missing variable{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(map(repr, missing))} (has {found})")
    images, labels = loaded['X'], loaded['y']
    if not (images.dtype == np.uint8 and images.ndim == 4 and images.shape[:3] == (32, 32, 3)):
        raise DataFileError(f"{path}: 'X' must be uint8 [32, 32, 3, N], found {images.dtype} "
                           f"{list(images.shape)}")
    n = images.shape[3]
    if labels.dtype.kind not in 'iuf' or labels.shape not in ((n, 1), (1, n), (n,)):
        raise DataFileError(f"{path}: 'y' must hold {n} labels as [N, 1] numbers, found {labels.dtype} "
                           f"{list(labels.shape)}")
    if labels.dtype.kind == 'f' and not np.array_equal(labels, np.round(labels)):
        raise DataFileError(f"{path}: 'y' holds non-integer labels")
    # As torchvision: int64, the digit 0 is stored as 10; images to [N, C, H, W].
    labels = labels.astype(np.int64).reshape(-1)
    np.place(labels, labels == 10, 0)
    bad = (labels < 0) | (labels >= n_class)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise DataFileError(f"{path}: label {labels[index]} (sample {index}) is outside 1..{n_class} "
                           f"(10 stands for the digit 0)")
    if n == 0:
        raise DataFileError(f'{path}: holds no samples')
    return np.transpose(images, (3, 2, 0, 1)), labels


def read_svhn(spec, directory):
    """(train_set, test_set) of SVHN from the .mat files of `spec` in `directory`."""
    def split(files, train):
        images, labels = read_mat(spec.path_of(directory, files[0]), spec.n_class)
        return SVHNDataset(images, labels, spec.transform(train))

    return split(spec.train_files, True), split(spec.test_files, False)
