"""The network builder: YAML ``Network`` + ``Layers`` sections -> a spiking network (SPEC §3)."""
import torch
import torch.nn as nn

from .config_keys import ConfigError, get_choice, show
from .conv import ConvLayer, conv_output_shape
from .dropout import DropoutLayer
from .linear import LinearLayer, linear_output_shape
from .nds import check_nds, nds_source, read_nds_file  # noqa: F401 (read_nds_file: re-exported)
from .neuron import psp
from .neuron_registry import OUTPUT_NEURON
from .pooling import PoolingLayer, pooling_output_shape
from .settings import NetworkSettings

LAYER_TYPES = ('conv', 'linear', 'pooling', 'dropout')
OUTPUT_LAYER = 'output'
# Keys each layer type reads; unknown_layer_keys() warns about any other (published YAMLs carry some).
LAYER_KEYS = {
    'conv': {'type', 'in_channels', 'out_channels', 'kernel_size', 'padding', 'stride', 'dilation',
             'weight_scale', 'threshold'},
    'linear': {'type', 'n_inputs', 'n_outputs', 'weight_scale', 'threshold'},
    'pooling': {'type', 'kernel_size', 'stride', 'padding', 'theta', 'threshold'},
    'dropout': {'type', 'p'},
}


def layer_shapes(layers_cfg, input_shape):
    """Validate the ``Layers`` section against ``input_shape`` ``[C, H, W]`` without building
    anything; return ``[(name, type, out_shape), ...]``. Raises ConfigError naming the layer."""
    if not isinstance(layers_cfg, dict) or not layers_cfg:
        raise ConfigError("Layers must be a non-empty mapping of layer name -> layer settings")
    shape = tuple(input_shape)
    plan = []
    for name, cfg in layers_cfg.items():
        where = f"Layers.{name}"
        if not isinstance(cfg, dict):
            raise ConfigError(f"{where} must be a mapping, got {show(cfg)}")
        kind = get_choice(cfg, 'type', where, LAYER_TYPES)
        if kind == 'conv':
            shape = conv_output_shape(cfg, shape, where)
        elif kind == 'linear':
            shape = linear_output_shape(cfg, shape, where)
        elif kind == 'pooling':
            shape = pooling_output_shape(cfg, shape, where)
        plan.append((name, kind, shape))
    last_name, last_kind, _ = plan[-1]
    if last_name != OUTPUT_LAYER or last_kind != 'linear':
        raise ConfigError(f"Layers: the last layer must be a linear layer named '{OUTPUT_LAYER}', "
                          f"got {last_kind} layer '{last_name}'")
    return plan


def output_neuron(settings):
    """The output layer's neuron: plain LIF in every published model, none for the softmax
    read-out (the linear output itself)."""
    return None if settings.loss == 'softmax' else OUTPUT_NEURON


def output_batch_norm(settings):
    """The published code puts BatchNorm on the output layer only for kernel-loss LIF networks."""
    return settings.is_bn and settings.loss == 'kernel' and not settings.neuron.adaptive


def unknown_layer_keys(layers_cfg):
    """``['Layers.name.key', ...]`` for keys no layer reads (published YAMLs carry some)."""
    return [f"Layers.{name}.{key}" for name, cfg in layers_cfg.items()
            if cfg.get('type') in LAYER_KEYS  # (an unknown type is an error of layer_shapes)
            for key in cfg if key not in LAYER_KEYS[cfg['type']]]


class Network(nn.Module):
    """A feed-forward spiking network.

    ``Network(network_cfg, layers_cfg, input_shape)`` takes the YAML's ``Network`` and ``Layers``
    sections as dicts and the image shape ``[C, H, W]``. ``net(x, is_train)`` takes
    ``x[B, C, H, W, T]`` (the normalised image on every time step) and returns ``(out, nds)``:
    ``out[B, n_class, 1, 1, T]`` and, when ``save_target`` is set, ``nds`` mapping each spiking
    layer's name to its batch-mean pre-reset membrane potential ``[*out_shape, T]``.
    Layers exchange *time-major* tensors ``[T, B, C, H, W]`` internally.
    """

    def __init__(self, network_cfg, layers_cfg, input_shape):
        super().__init__()
        settings = NetworkSettings.from_config(network_cfg)
        self.settings = settings
        self.input_shape = tuple(input_shape)
        plan = layer_shapes(layers_cfg, input_shape)
        n_class = plan[-1][2][0]
        if n_class != settings.n_class:
            raise ConfigError(f"Layers.{OUTPUT_LAYER}.n_outputs is {n_class} but Network.n_class "
                              f"is {settings.n_class}")
        layers = []
        shape = self.input_shape
        for name, kind, out_shape in plan:
            cfg = layers_cfg[name]
            is_output = name == OUTPUT_LAYER
            if kind == 'conv':
                layer = ConvLayer(name, cfg, shape, settings, settings.neuron)
            elif kind == 'linear':
                layer = LinearLayer(
                    name, cfg, shape, settings,
                    output_neuron(settings) if is_output else settings.neuron,
                    batch_norm=output_batch_norm(settings) if is_output else settings.is_bn)
            elif kind == 'pooling':
                layer = PoolingLayer(name, cfg, shape)
            else:
                layer = DropoutLayer(name, cfg, shape)
            layers.append(layer)
            shape = out_shape
        self.layers = nn.ModuleList(layers)
        if settings.ckpt_v is not None:
            self.load_nds(settings.ckpt_v)

    def forward(self, x, is_train=False):
        expected = (*self.input_shape, self.settings.n_steps)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"Network input must be [B, {', '.join(map(str, expected))}], "
                             f"got {list(x.shape)}")
        record = self.settings.save_target
        h = psp(x.permute(4, 0, 1, 2, 3), self.settings.tau_s)  # -> time-major [T, B, C, H, W]
        nds = {}
        for layer in self.layers:
            h, mem_mean = layer(h, is_train, record)
            if mem_mean is not None:
                nds[layer.name] = mem_mean
        out = h.flatten(2).permute(1, 2, 0)  # [T, B, N] -> [B, N, T]
        return out[:, :, None, None, :], nds

    @torch.no_grad()
    def weight_clipper(self):
        """After every optimiser step: conv/linear weights to [-4, 4], ``theta_v >= 0``."""
        for layer in self.layers:
            if hasattr(layer, 'clip_weights'):
                layer.clip_weights()

    @torch.no_grad()
    def load_nds(self, path_or_dict):
        """Load the NDS (``{layer_name: tensor[*out_shape, T]}``) into every TA-LIF layer. A missing
        file, layer or a shape mismatch is a ConfigError naming ``Network.ckpt_v``
        (layers/nds.py, the checks the config loader runs too)."""
        if isinstance(path_or_dict, dict):
            nds, source = path_or_dict, "the NDS"
        else:
            nds, source = read_nds_file(path_or_dict), nds_source(path_or_dict)
        targets = {layer.name: layer.target_train for layer in self.layers
                   if getattr(layer, 'target_train', None) is not None}
        check_nds(nds, {name: target.shape for name, target in targets.items()}, source)
        for name, target in targets.items():
            target.copy_(nds[name])

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Accepts the released layout (keys with ``module.``, from DDP) and the plain one."""
        if state_dict and all(key.startswith('module.') for key in state_dict):
            state_dict = {key[len('module.'):]: value for key, value in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

