"""The gradient-rule registry: how a spiking layer's backward is computed, by name. One registry
for attacks (:func:`use_gradient_path`, ``ATTACK.ft_gradient``, robustness/) and training
(``Network.train_gradient``).

A **gradient path** is a callable with the signature and return value of
:func:`layers.neuron.spike`, ``(dynamics, current[T, B, *shape], state, tau_m, tau_s, threshold,
record_nds) -> (trace, batch-mean membrane [*shape, T] or None)``: the neuron type's forward
(``dynamics``, ``layers/dynamics.py``), its own gradient. A **rule** names a family of paths and
reads their options from the text after its name (``bptt:<surrogate>:<sharpness>``):

- ``published``: the TSSL-BP-style surrogate of the published code (SPEC §4); on CUDA in
  float32/half its forward and backward run as the Triton kernels of ``layers/fused.py``.
- ``bptt[:<surrogate>[:<sharpness>]]``: the exact BPTT gradient (``layers/bptt.py``).

Another rule plugs in with one ``BACKWARDS`` entry. A layer uses its neuron type's rule
(``NeuronType.backward``) unless its ``gradient_path`` is set.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

from . import neuron
from .bptt import BpttPath
from .surrogate import SURROGATES

PUBLISHED = 'published'


def _published_arguments(arguments, usage):
    if arguments:
        raise ValueError(f"'{PUBLISHED}' takes no options; {usage}")
    return neuron.spike


@dataclass(frozen=True)
class Backward:
    name: str
    path: Callable   # the rule with its default options: a gradient path
    parse: Callable  # (the ':'-separated options after the name, usage text) -> a gradient path


BACKWARDS = MappingProxyType({backward.name: backward for backward in (
    Backward(PUBLISHED, neuron.spike, _published_arguments),
    Backward('bptt', BpttPath(), BpttPath.from_arguments),
)})


def parse_gradient_path(text):
    """``'published'`` (or ``None``) -> ``None`` (each layer's own rule: the published one for
    every neuron type here); ``'<rule>[:<options>]'`` -> its gradient path (``'bptt:sigmoid:5'``
    -> :class:`BpttPath`); a path object is returned as is. Raises ValueError naming the
    choices."""
    if text is None or callable(text):
        return None if text is neuron.spike else text
    if not isinstance(text, str):
        raise ValueError(f"gradient path must be a string, got {type(text).__name__}")
    usage = (f"expected '{PUBLISHED}' or 'bptt[:<surrogate>[:<sharpness>]]' with a "
             f"surrogate among {', '.join(SURROGATES)}")
    name, *arguments = text.split(':')
    if name not in BACKWARDS:
        raise ValueError(f"unknown gradient path {text!r}; {usage}")
    try:
        path = BACKWARDS[name].parse(arguments, usage)
    except ValueError as exc:
        raise ValueError(f"gradient path {text!r}: {exc}") from None
    return None if path is BACKWARDS[PUBLISHED].path else path


def gradient_path_name(path):
    """A stable name for reports: ``'published'`` or ``'bptt:<surrogate>:<sharpness>'``."""
    path = parse_gradient_path(path)
    return PUBLISHED if path is None else path.name


@contextmanager
def use_gradient_path(model, path):
    """Within the block, every spiking layer of ``model`` takes its gradient by ``path``
    (``None``/``'published'``: nothing changes; a gradient path or its text). The previous
    paths are restored afterwards, also when the block raises. A path is chosen when a layer's
    forward runs: the block must hold the forward; the backward may come after it."""
    path = parse_gradient_path(path)
    if path is None:
        yield model
        return
    # Every spiking layer has the attribute (layers.spiking.SpikingLayer); duck-typed so that
    # this module need not import the layers. A model without spiking layers (the ANN twin) has
    # no spike to take a surrogate of: every path is its plain autograd gradient, a no-op.
    layers = [m for m in model.modules() if hasattr(m, 'gradient_path')]
    previous = [layer.gradient_path for layer in layers]
    try:
        for layer in layers:
            layer.gradient_path = path
        yield model
    finally:
        for layer, hook in zip(layers, previous):
            layer.gradient_path = hook
