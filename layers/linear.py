import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config_keys import ConfigError, get_number
from .spiking import SpikingLayer


def linear_output_shape(cfg, in_shape, where):
    n_inputs = get_number(cfg, 'n_inputs', where, positive=True, integer=True)
    n_outputs = get_number(cfg, 'n_outputs', where, positive=True, integer=True)
    get_number(cfg, 'weight_scale', where, default=1)
    flat = math.prod(in_shape)
    if n_inputs != flat:
        raise ConfigError(f"{where}.n_inputs is {n_inputs} but the previous layer produces "
                          f"{flat} values (shape {list(in_shape)})")
    return (n_outputs, 1, 1)


class LinearLayer(SpikingLayer):
    """A fully connected layer on the flattened ``[C*H*W]`` input at every time step, optional
    BatchNorm, then the spiking neuron -- or, for the softmax read-out, nothing after the linear."""

    def __init__(self, name, cfg, in_shape, settings, adaptive, spiking=True, batch_norm=None):
        where = f"Layers.{name}"
        out_shape = linear_output_shape(cfg, in_shape, where)
        threshold = get_number(cfg, 'threshold', where) if spiking else None
        super().__init__(name, out_shape, threshold, settings, spiking=spiking, adaptive=adaptive)
        weight = torch.empty(cfg['n_outputs'], cfg['n_inputs'])
        nn.init.kaiming_normal_(weight)
        self.weight = nn.Parameter(weight * get_number(cfg, 'weight_scale', where, default=1))
        self.init_neuron(settings, random_nds=False)
        batch_norm = settings.is_bn if batch_norm is None else batch_norm
        self.bn = nn.BatchNorm1d(cfg['n_outputs']) if batch_norm else None

    def forward(self, x, is_train=False, record_nds=False):
        n_steps, batch = x.shape[:2]
        h = F.linear(x.reshape(n_steps * batch, -1), self.weight)
        if self.bn is not None:
            # BatchNorm1d over [B, N, T] == BatchNorm1d over [T*B, N].
            h = self.bn(h)
        return self.fire(h.view(n_steps, batch, *self.neuron_shape), record_nds)
