import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config_keys import MAX_SCALE, ConfigError, check_elements, get_number
from .spiking import SpikingLayer


def linear_output_shape(cfg, in_shape, where):
    n_inputs = get_number(cfg, 'n_inputs', where, positive=True, integer=True)
    n_outputs = get_number(cfg, 'n_outputs', where, positive=True, integer=True)
    get_number(cfg, 'weight_scale', where, default=1, positive=True, maximum=MAX_SCALE)
    # Optional here: the softmax read-out has no neuron (LinearLayer requires it where it fires).
    get_number(cfg, 'threshold', where, default=None, positive=True)
    flat = math.prod(in_shape)
    if n_inputs != flat:
        raise ConfigError(f"{where}.n_inputs is {n_inputs} but the previous layer produces "
                          f"{flat} values (shape {list(in_shape)})")
    check_elements(where, f"the weight [{n_outputs}, {n_inputs}]", n_outputs * n_inputs)
    return (n_outputs, 1, 1)


class LinearLayer(SpikingLayer):
    """A fully connected layer on the flattened ``[C*H*W]`` input at every time step, optional
    BatchNorm, then the spiking neuron -- or, for the softmax read-out, nothing after the linear."""

    def __init__(self, name, cfg, in_shape, settings, neuron, batch_norm=None):
        where = f"Layers.{name}"
        out_shape = linear_output_shape(cfg, in_shape, where)
        check_elements(where, "the output (and NDS) over all time steps",
                       out_shape[0] * settings.n_steps)
        threshold = get_number(cfg, 'threshold', where, positive=True) if neuron is not None else None
        super().__init__(name, out_shape, threshold, settings, neuron)
        weight = torch.empty(out_shape[0], math.prod(in_shape))
        nn.init.kaiming_normal_(weight)
        self.weight = nn.Parameter(weight * get_number(cfg, 'weight_scale', where, default=1))
        self.init_neuron(settings, random_nds=False)
        batch_norm = settings.is_bn if batch_norm is None else batch_norm
        self.bn = nn.BatchNorm1d(out_shape[0]) if batch_norm else None

    def forward(self, x, is_train=False, record_nds=False):
        n_steps, batch = x.shape[:2]
        h = F.linear(x.reshape(n_steps * batch, -1), self.weight)
        if self.bn is not None:
            # BatchNorm1d over [B, N, T] == BatchNorm1d over [T*B, N].
            h = self.bn(h)
        return self.fire(h.view(n_steps, batch, *self.neuron_shape), record_nds)
