"""The NDS (neuron dynamics signature) of the TA-LIF layers: read from ``Network.ckpt_v`` and
checked against the layers that need one. The one place of these checks and their messages, for
the config loader (before anything is built) and the network builder (``Network.load_nds``)."""
import os

import torch

from .config_keys import ConfigError, show


def read_nds_file(path):
    """``{layer_name: tensor}`` from an NDS file (tensors only; mapped to the CPU). The path is
    used as given: the config loader has already resolved it (``paths.resolve_input_path``)."""
    if not os.path.isfile(path):
        raise ConfigError(f"Network.ckpt_v: NDS file '{path}' does not exist")
    if os.path.getsize(path) == 0:
        raise ConfigError(f"Network.ckpt_v: NDS file '{path}' is empty (0 bytes)")
    try:
        nds = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is the same user error
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # EOFError('') too
        raise ConfigError(f"Network.ckpt_v: cannot read NDS file '{path}': {detail}") from None
    if not isinstance(nds, dict) or not all(torch.is_tensor(v) for v in nds.values()):
        raise ConfigError(f"Network.ckpt_v: '{path}' is not a {{layer name: tensor}} NDS file")
    for name, value in nds.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ConfigError(f"Network.ckpt_v: NDS file '{path}': layer '{name}' holds NaN/Inf values")
    return nds


def nds_shapes(plan, n_steps, output_layer='output'):
    """``{layer name: (*out_shape, T)}``: the NDS each TA-LIF layer (every conv/linear layer but
    the output) needs, from ``layer_shapes()``'s plan."""
    return {name: (*out_shape, n_steps) for name, kind, out_shape in plan
            if kind in ('conv', 'linear') and name != output_layer}


def check_nds(nds, shapes, source):
    """Every layer of ``shapes`` (``{name: shape}``) must find a tensor of its shape in ``nds``;
    else a ConfigError that starts with ``source`` (e.g. ``Network.ckpt_v (path)``)."""
    for name, shape in shapes.items():
        if name not in nds:
            have = show(', '.join(map(str, nds)), 200) if nds else 'nothing'
            raise ConfigError(f"{source} has no NDS for layer '{name}' (it has: {have})")
        value = nds[name]
        if not torch.is_tensor(value) or tuple(value.shape) != tuple(shape):
            got = list(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ConfigError(f"{source}: layer '{name}' NDS has shape {got}, expected {list(shape)}")


def nds_source(path):
    """How messages name the NDS: the file of ``Network.ckpt_v``."""
    return f"Network.ckpt_v ({path})"
