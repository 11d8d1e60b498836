import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError, get_number, get_pair

DEFAULT_THETA = 1.1


def pooling_output_shape(cfg, in_shape, where):
    kernel = get_pair(cfg, 'kernel_size', where, minimum=1)
    stride = get_pair(cfg, 'stride', where, default=kernel, minimum=1)
    padding = get_pair(cfg, 'padding', where, default=0)
    get_number(cfg, 'theta', where, default=DEFAULT_THETA)
    size = [(n + 2 * p - k) // s + 1 for n, k, p, s in zip(in_shape[1:], kernel, padding, stride)]
    if min(size) < 1:
        raise ConfigError(f"{where}: kernel_size {list(kernel)} does not fit the input "
                          f"{list(in_shape[1:])}")
    return (in_shape[0], *size)


class PoolingLayer(nn.Module):
    """Fixed sum pooling per channel and time step; every weight equals ``theta``. The weight is a
    buffer (saved as ``weight``, shape ``[1, 1, kh, kw, 1]``, never trained). The YAML's
    ``threshold`` key on pooling layers is ignored, as in the published code."""

    def __init__(self, name, cfg, in_shape):
        super().__init__()
        where = f"Layers.{name}"
        self.name = name
        self.out_shape = pooling_output_shape(cfg, in_shape, where)
        self.kernel = get_pair(cfg, 'kernel_size', where)
        self.stride = get_pair(cfg, 'stride', where, default=self.kernel)
        self.padding = get_pair(cfg, 'padding', where, default=0)
        theta = get_number(cfg, 'theta', where, default=DEFAULT_THETA)
        self.register_buffer('weight', torch.full((1, 1, *self.kernel, 1), float(theta)))

    def forward(self, x, is_train=False, record_nds=False):
        n_steps, batch, channels = x.shape[:3]
        h = F.conv2d(x.reshape(-1, 1, *x.shape[3:]), self.weight.squeeze(-1), None, self.stride,
                     self.padding)
        return h.view(n_steps, batch, *self.out_shape), None

    def extra_repr(self):
        return f"name={self.name!r}, kernel={list(self.kernel)}, stride={list(self.stride)}, " \
               f"theta={self.weight.flatten()[0].item():g}"
