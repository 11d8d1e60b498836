import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config_keys import MAX_SCALE, ConfigError, check_elements, get_number, get_pair
from .spiking import SpikingLayer


def conv_output_shape(cfg, in_shape, where):
    """Validate a conv layer's keys against its input ``[C, H, W]``; return ``[C', H', W']``."""
    in_channels = get_number(cfg, 'in_channels', where, positive=True, integer=True)
    out_channels = get_number(cfg, 'out_channels', where, positive=True, integer=True)
    kernel = get_pair(cfg, 'kernel_size', where, minimum=1)
    padding = get_pair(cfg, 'padding', where, default=0)
    stride = get_pair(cfg, 'stride', where, default=1, minimum=1)
    dilation = get_pair(cfg, 'dilation', where, default=1, minimum=1)
    get_number(cfg, 'threshold', where, positive=True)
    get_number(cfg, 'weight_scale', where, default=1, positive=True, maximum=MAX_SCALE)
    if in_channels != in_shape[0]:
        raise ConfigError(f"{where}.in_channels is {in_channels} but the previous layer produces "
                          f"{in_shape[0]} channels (shape {list(in_shape)})")
    size = [(n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, p, s, d in zip(in_shape[1:], kernel, padding, stride, dilation)]
    if min(size) < 1:
        raise ConfigError(f"{where}: kernel_size {list(kernel)} does not fit the input "
                          f"{list(in_shape[1:])}")
    check_elements(where, f"the weight [{out_channels}, {in_channels}, {kernel[0]}, {kernel[1]}]",
                   out_channels * in_channels * kernel[0] * kernel[1])
    check_elements(where, f"the output {[out_channels, *size]} of one sample and time step",
                   out_channels * size[0] * size[1])
    return (out_channels, *size)


class ConvLayer(SpikingLayer):
    """A 2-D convolution applied at every time step (weight ``[out, in, kh, kw, 1]``, the published
    Conv3d layout), optional BatchNorm, then the spiking neuron. Time is folded into the batch."""

    def __init__(self, name, cfg, in_shape, settings, neuron):
        where = f"Layers.{name}"
        out_shape = conv_output_shape(cfg, in_shape, where)
        check_elements(where, "the output (and NDS) over all time steps",
                       math.prod(out_shape) * settings.n_steps)
        super().__init__(name, out_shape, cfg['threshold'], settings, neuron)
        self.stride = get_pair(cfg, 'stride', where, default=1)
        self.padding = get_pair(cfg, 'padding', where, default=0)
        self.dilation = get_pair(cfg, 'dilation', where, default=1)
        kh, kw = get_pair(cfg, 'kernel_size', where)
        weight = torch.empty(out_shape[0], in_shape[0], kh, kw, 1)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Conv3d's default initialisation
        self.weight = nn.Parameter(weight * get_number(cfg, 'weight_scale', where, default=1))
        self.init_neuron(settings, random_nds=True)
        self.bn = nn.BatchNorm2d(out_shape[0]) if settings.is_bn else None

    def forward(self, x, is_train=False, record_nds=False):
        n_steps, batch = x.shape[:2]
        h = F.conv2d(x.flatten(0, 1), self.weight.squeeze(-1), None, self.stride, self.padding,
                     self.dilation)
        if self.bn is not None:
            # BatchNorm3d over [B, C, H, W, T] == BatchNorm2d over [T*B, C, H, W].
            h = self.bn(h)
        return self.fire(h.view(n_steps, batch, *self.neuron_shape), record_nds)
