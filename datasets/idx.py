"""MNIST-type data (the idx file format) read straight into memory.

torchvision's MNIST class needs uncompressed files under ``root/<ClassName>/raw`` and
turns every sample into a PIL image before ToTensor + Normalize.  Reading the idx files
ourselves lets us use gzipped files where they lie (e.g. read-only system copies) and
serve normalised tensors without the per-sample PIL round trip.
"""
import gzip

import numpy as np
import torch
from torch.utils.data import Dataset

_UNSIGNED_BYTE = 0x08  # idx type code of uint8 data, the only type MNIST-type files use


def read_idx(path):
    """Read an idx file (gzipped if the name ends in '.gz') into a uint8 tensor.

    Layout: two zero bytes, the type code, the number of dimensions n, then n big-endian
    int32 sizes, then the data in row-major order.
    """
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UNSIGNED_BYTE:
        raise ValueError(f'{path}: not an idx file of unsigned bytes')
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype='>i4', count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f'{path}: header announces shape {shape} but the file holds {data.size} values '
                         '(truncated or corrupt file?)')
    # copy: frombuffer over immutable bytes gives a read-only array, which torch warns about.
    return torch.from_numpy(data.reshape(shape).copy())


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
