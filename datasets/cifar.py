"""CIFAR-10 / CIFAR-100 read from their python-pickle batch files, safely and checked.

torchvision's CIFAR classes ``pickle.load`` every batch file, which runs any code a crafted
file holds (they rely on the md5 of the official files, which the small test stand-ins and
re-pickled copies cannot match).  Here the files go through ``load_data_pickle`` (only plain
data can be rebuilt), every entry is checked (keys, shapes, dtypes, label range), and the
result is the same as torchvision's: ``.data`` uint8 [N, 32, 32, 3] (HWC), ``.targets`` a list
of ints, samples served as ``transform(PIL image), int label``.
"""
import os

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .errors import DataFileError
from .safe_pickle import load_data_pickle

_ROW = 3 * 32 * 32  # one image: the R, G and B planes of 32x32 bytes


class CIFARDataset(Dataset):
    """In-memory CIFAR images (uint8 HWC) and labels, served like torchvision's CIFAR10/100."""

    def __init__(self, data, targets, classes, transform=None):
        self.data = data
        self.targets = targets
        self.classes = classes
        self.class_to_idx = {name: i for i, name in enumerate(classes)}
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        image, target = self.data[index], self.targets[index]
        image = Image.fromarray(image)
        if self.transform is not None:
            image = self.transform(image)
        return image, target


def _load_dict(path, required):
    entry = load_data_pickle(path)
    if not isinstance(entry, dict):
        raise DataFileError(f'{path}: expected a dict, the file holds a {type(entry).__name__}')
    missing = [key for key in required if key not in entry]
    if missing:
        raise DataFileError(f'{path}: missing key{"s" if len(missing) > 1 else ""} '
                           f'{", ".join(map(repr, missing))} (has {", ".join(map(repr, entry))})')
    return entry


def read_batch(path, label_key, n_class):
    """(uint8 rows [N, 3072], list of N int labels) of one batch file, checked."""
    entry = _load_dict(path, ('data', label_key))
    data, labels = entry['data'], entry[label_key]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _ROW):
        found = (f'{data.dtype} array of shape {list(data.shape)}' if isinstance(data, np.ndarray)
                 else type(data).__name__)
        raise DataFileError(f"{path}: 'data' must be a uint8 array [N, {_ROW}] (32x32 RGB rows), "
                           f'found {found}')
    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise DataFileError(f"{path}: {label_key!r} must be a list of ints, found {type(labels).__name__}")
    array = np.asarray(labels)
    if array.ndim != 1 or (array.size and array.dtype.kind not in 'iu'):
        raise DataFileError(f"{path}: {label_key!r} must be a list of ints")
    if len(array) != len(data):
        raise DataFileError(f"{path}: {len(data)} images but {len(array)} labels in {label_key!r}")
    _check_label_range(path, array, n_class)
    return data, array.tolist()  # python ints, as torchvision's targets


def _check_label_range(path, labels, n_class):
    bad = (labels < 0) | (labels >= n_class)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise DataFileError(f'{path}: label {labels[index]} (sample {index}) is outside 0..{n_class - 1}')


def read_cifar(spec, directory, label_key, names_key):
    """(train_set, test_set) of CIFAR10/100 from the batch files of `spec` in `directory`."""
    meta_path = spec.path_of(directory, spec.extra_files[0])
    classes = _load_dict(meta_path, (names_key,))[names_key]
    if not (isinstance(classes, list) and len(classes) == spec.n_class):
        raise DataFileError(f'{meta_path}: {names_key!r} must list the {spec.n_class} class names')

    def split(files, train):
        paths = [spec.path_of(directory, file_name) for file_name in files]
        batches = [read_batch(path, label_key, spec.n_class) for path in paths]
        # As torchvision: stack the rows, then [N, 3, 32, 32] planes viewed as HWC.
        data = np.vstack([rows for rows, _ in batches]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        targets = [label for _, labels in batches for label in labels]
        if not targets:
            raise DataFileError(f'{os.path.dirname(paths[0])}: {", ".join(files)} hold no samples')
        return CIFARDataset(data, targets, classes, spec.transform(train))

    return split(spec.train_files, True), split(spec.test_files, False)
