import torch.nn as nn
import torch.nn.functional as F

from .config_keys import ConfigError, get_number


class DropoutLayer(nn.Module):
    """Element-wise dropout (an independent mask per element and time step), applied only when the
    network is called with ``is_train=True`` -- whatever the module's train/eval mode."""

    def __init__(self, name, cfg, in_shape):
        super().__init__()
        self.name = name
        self.p = get_number(cfg, 'p', f"Layers.{name}", default=0.5, minimum=0)
        if self.p >= 1:
            raise ConfigError(f"Layers.{name}.p must be below 1, got {self.p}")
        self.out_shape = tuple(in_shape)

    def forward(self, x, is_train=False, record_nds=False):
        return F.dropout(x, self.p, training=is_train), None

    def extra_repr(self):
        return f"name={self.name!r}, p={self.p}"
