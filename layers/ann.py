"""The ANN twin of a spiking network (``Network.model: ANN``): the same ``Layers`` with ReLU in
place of the spiking neuron, trained with cross-entropy on its logits.

It is a baseline for the robustness results: the same architecture, the same weights layout and
initialisation (the same RNG draws, so a seed gives the LIF twin's initial weights), the same
optimiser, clipper, data, attacks and threat model -- only the neuron differs.

Reading of the input. The network is called like the spiking one, ``net(x[B, C, H, W, T],
is_train)``, and reads ``x.mean(-1)``. Under direct encoding (``time_expand``) every step holds
the image, so the mean *is* the image. Under a per-step perturbation ``x_t = image + delta_t``
with ``|delta_t| <= eps`` the mean is ``image + mean_t delta_t``, again inside the eps-ball: the
ANN is attacked in the same L-inf ball as its twin, and since ``d mean / d x_t = 1/T`` for every
step, every gradient attack sends the same sign to every step, so the per-step and the static
threat models coincide for it (nothing is gained or lost by letting the steps differ). Reading
one step (``x[..., 0]``) instead would let the attack waste its budget on steps the ANN ignores.

Layers (each as in SPEC §3, with the neuron replaced):
- conv: the same weight ``[out, in, kh, kw, 1]`` (no bias, as the spiking layer), BatchNorm2d if
  ``is_bn``, ReLU;
- linear: the same weight ``[out, in]`` (no bias), BatchNorm1d if ``is_bn``, ReLU -- except
  ``output``: its linear output are the logits (no BN, no ReLU);
- pooling: *average* pooling over the same windows. The spiking net's sum pooling with weight
  ``theta`` (1.1) exists to drive the next layer's thresholds; a ReLU network is positively
  homogeneous, so ``theta * k^2`` would only be a gain per pooling layer that the next weights
  have to undo (4.4x per 2x2 window, ~19x over the two poolings of the MNIST net, logits far from
  what the Kaiming initialisation aims at). The average keeps the initial activation scale;
- dropout: as in the spiking net (applied when called with ``is_train=True``).

Output: the logits as ``[B, n_class, 1, 1, 1]``, the spiking nets' ``[B, n_class, 1, 1, T]`` with
one step, so that ``predict`` (argmax of ``out.sum(-1)``), ``compute_loss`` / ``attack_loss``
(the softmax branch: cross-entropy of ``out.mean(-1)``, i.e. of the logits) and every caller
(``out, _ = model(x, False)``) work unchanged. Its settings say ``loss: softmax`` whatever
``Network.loss`` is: the ANN is always trained and attacked on the cross-entropy of its logits;
``Network.loss`` keeps choosing the defaults it shares with its twin (``T_max``, ``ATTACK.clamp``,
config.py).

Gradient: plain autograd. There is no spike, so there is no surrogate to choose:
``use_gradient_path`` leaves it alone (layers/bptt.py) and config.py refuses a non-published
``ATTACK.ft_gradient`` for it.
"""
import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config_keys import ConfigError, get_choice, get_number, get_pair
from .conv import conv2d, conv_output_shape
from .linear import linear_output_shape
from .network import OUTPUT_LAYER, Network, layer_shapes
from .pooling import pooling_geometry
from .settings import MODELS as NEURON_MODELS, NetworkSettings

ANN = 'ANN'
MODELS = (*NEURON_MODELS, ANN)


@dataclasses.dataclass(frozen=True)
class AnnSettings(NetworkSettings):
    """``NetworkSettings`` of an ANN: no neuron, not adaptive, cross-entropy on the logits."""

    @property
    def neuron(self):
        return None

    @property
    def adaptive(self):
        return False


def network_settings(cfg, where='Network'):
    """The ``Network`` section parsed: ``AnnSettings`` for ``model: ANN``, else
    ``NetworkSettings.from_config`` (the spiking models)."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(cfg).__name__}")
    model = get_choice(cfg, 'model', where, MODELS, default='LIF')
    if model != ANN:
        return NetworkSettings.from_config(cfg, where)
    # The keys the ANN shares with its twin are validated as for a LIF network (n_steps is still
    # the length of the input's time axis; tau_m/tau_s are read but unused).
    base = NetworkSettings.from_config({**cfg, 'model': 'LIF'}, where)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(NetworkSettings)}
    return AnnSettings(**{**fields, 'model': ANN, 'loss': 'softmax'})


def is_ann(settings):
    return settings.model == ANN


class AnnConv(nn.Module):
    def __init__(self, name, cfg, in_shape, settings):
        super().__init__()
        where = f"Layers.{name}"
        self.name = name
        self.out_shape = conv_output_shape(cfg, in_shape, where)
        self.stride = get_pair(cfg, 'stride', where, default=1)
        self.padding = get_pair(cfg, 'padding', where, default=0)
        self.dilation = get_pair(cfg, 'dilation', where, default=1)
        kh, kw = get_pair(cfg, 'kernel_size', where)
        # The spiking ConvLayer's weight, layout and initialisation (same RNG draws).
        weight = torch.empty(self.out_shape[0], in_shape[0], kh, kw, 1)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.weight = nn.Parameter(weight * get_number(cfg, 'weight_scale', where, default=1))
        self.bn = nn.BatchNorm2d(self.out_shape[0]) if settings.is_bn else None

    def forward(self, x, is_train=False):
        # (the spiking ConvLayer's convolution, few-channel input gradient included: same work)
        h = conv2d(x, self.weight.squeeze(-1), self.stride, self.padding, self.dilation)
        return F.relu(h if self.bn is None else self.bn(h))

    def clip_weights(self):
        self.weight.clamp_(-4, 4)


class AnnLinear(nn.Module):
    def __init__(self, name, cfg, in_shape, settings, is_output):
        super().__init__()
        where = f"Layers.{name}"
        self.name = name
        self.is_output = is_output
        self.out_shape = linear_output_shape(cfg, in_shape, where)
        weight = torch.empty(self.out_shape[0], math.prod(in_shape))
        nn.init.kaiming_normal_(weight)
        self.weight = nn.Parameter(weight * get_number(cfg, 'weight_scale', where, default=1))
        self.bn = nn.BatchNorm1d(self.out_shape[0]) if settings.is_bn and not is_output else None

    def forward(self, x, is_train=False):
        h = F.linear(x.flatten(1), self.weight)
        if self.is_output:
            return h  # the logits
        return F.relu(h if self.bn is None else self.bn(h))

    def clip_weights(self):
        self.weight.clamp_(-4, 4)


class AnnPooling(nn.Module):
    def __init__(self, name, cfg, in_shape):
        super().__init__()
        self.name = name
        self.out_shape, self.kernel, self.stride, self.padding = pooling_geometry(
            cfg, in_shape, f"Layers.{name}")

    def forward(self, x, is_train=False):
        # count_include_pad: the zero padding counts, as in the spiking net's padded sum pooling.
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True)


class AnnDropout(nn.Module):
    def __init__(self, name, cfg):
        super().__init__()
        self.name = name
        self.p = get_number(cfg, 'p', f"Layers.{name}", default=0.5, minimum=0)
        if self.p >= 1:
            raise ConfigError(f"Layers.{name}.p must be below 1, got {self.p}")

    def forward(self, x, is_train=False):
        return F.dropout(x, self.p, training=is_train)  # like the spiking net: by is_train


class AnnNetwork(nn.Module):
    """``AnnNetwork(network_cfg, layers_cfg, input_shape)``: the ReLU twin of
    ``layers.Network`` (see the module docstring). ``net(x[B, C, H, W, T], is_train)`` ->
    ``(logits[B, n_class, 1, 1, 1], {})`` (no NDS: there is no membrane)."""

    def __init__(self, network_cfg, layers_cfg, input_shape):
        super().__init__()
        settings = network_settings(network_cfg)
        if not is_ann(settings):
            raise ValueError(f"AnnNetwork needs Network.model {ANN}, got {settings.model}")
        self.settings = settings
        self.input_shape = tuple(input_shape)
        plan = layer_shapes(layers_cfg, input_shape)
        if plan[-1][2][0] != settings.n_class:
            raise ConfigError(f"Layers.{OUTPUT_LAYER}.n_outputs is {plan[-1][2][0]} but "
                              f"Network.n_class is {settings.n_class}")
        layers, shape = [], self.input_shape
        for name, kind, out_shape in plan:
            cfg = layers_cfg[name]
            if kind == 'conv':
                layers.append(AnnConv(name, cfg, shape, settings))
            elif kind == 'linear':
                layers.append(AnnLinear(name, cfg, shape, settings, name == OUTPUT_LAYER))
            elif kind == 'pooling':
                layers.append(AnnPooling(name, cfg, shape))
            else:
                layers.append(AnnDropout(name, cfg))
            shape = out_shape
        self.layers = nn.ModuleList(layers)

    def forward(self, x, is_train=False):
        expected = (*self.input_shape, self.settings.n_steps)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"Network input must be [B, {', '.join(map(str, expected))}], "
                             f"got {list(x.shape)}")
        h = x.mean(-1)  # the image under direct encoding (module docstring)
        for layer in self.layers:
            h = layer(h, is_train)
        return h[:, :, None, None, None], {}

    @torch.no_grad()
    def weight_clipper(self):
        """The spiking nets' clipper (weights to [-4, 4]): the same training procedure."""
        for layer in self.layers:
            if hasattr(layer, 'clip_weights'):
                layer.clip_weights()

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Accepts keys with ``module.`` (saved from DDP) and plain ones, as ``Network``."""
        if state_dict and all(key.startswith('module.') for key in state_dict):
            state_dict = {key[len('module.'):]: value for key, value in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def build_network(network_cfg, layers_cfg, input_shape):
    """The network of the ``Network`` and ``Layers`` sections: ``AnnNetwork`` for ``model: ANN``,
    else the spiking ``layers.Network``."""
    model = network_cfg.get('model', 'LIF') if isinstance(network_cfg, dict) else None
    cls = AnnNetwork if model == ANN else Network
    return cls(network_cfg, layers_cfg, input_shape)
