"""The neuron registry: every neuron type (the YAML's ``Network.model``) and every neuron gradient
rule (a "backward"), by name.

A **neuron type** says which state a spiking layer owns, how that state is initialised, and which
backward its spikes use. The step loop itself (SPEC §4) is :func:`layers.neuron.neuron_forward`
(and its Triton twin in ``layers/fused.py``): it adapts the threshold when the layer hands it the
TA-LIF state (``theta_v`` and the NDS), and is the plain LIF loop when that state is ``None``.

A **backward** is a function with the signature and return value of :func:`layers.neuron.spike`,
``(current[T, B, *shape], theta_v, nds, tau_m, tau_s, threshold, record_nds) -> (trace,
batch-mean membrane [*shape, T] or None)``: the same forward, its own gradient. ``'published'`` is
the TSSL-BP-style surrogate of the published code (on CUDA in float32/half it runs as the Triton
kernels of ``layers/fused.py``). Another rule plugs in with one ``BACKWARDS`` entry; a layer uses it
when its ``gradient_path`` is set (see ``SpikingLayer.fire``).

Adding a neuron type = one ``NEURONS`` entry (+ its step in ``layers/neuron.py`` and ``fused.py``).
"""
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Optional

import torch
import torch.nn as nn

from . import fused
from .bptt import BpttPath
from .neuron import spike


@dataclass(frozen=True)
class Backward:
    name: str
    spike: Callable          # spike()'s signature and return value
    cuda_kernels: Optional[ModuleType] = None  # where it runs as fused kernels on CUDA, if anywhere
    description: str = ''


BACKWARDS = {backward.name: backward for backward in (
    Backward('published', spike, cuda_kernels=fused,
             description='the published surrogate (SPEC §4): no gradient through the membrane '
                         'across steps, to the NDS or to the threshold state'),
    # For attacks (and adversarial training via ATTACK.ft_gradient), never for the training step:
    # the exact gradient of the same forward with the spike's step replaced by a surrogate, here
    # the published one at the dynamic threshold; other surrogates: bptt.parse_gradient_path.
    Backward('bptt', BpttPath(),
             description='exact BPTT through membrane, reset, trace and the adaptive threshold '
                         '(layers/bptt.py)'),
)}


def no_state(layer, settings, random_nds):
    """LIF: a fixed threshold, nothing to own."""


def ta_lif_state(layer, settings, random_nds):
    """TA-LIF: ``theta_v`` (trainable, ``1/tau_v``) and ``target_train``, the NDS ``[*shape, T]``:
    U(0, 1) in conv layers, 0.5 in linear ones until a recorded NDS is loaded (published)."""
    layer.theta_v = nn.Parameter(torch.full(layer.neuron_shape, 1 / settings.tau_v))
    nds_shape = layer.neuron_shape + (settings.n_steps,)
    layer.target_train = torch.rand(nds_shape) if random_nds else torch.full(nds_shape, 0.5)


@dataclass(frozen=True)
class NeuronType:
    name: str                # the value of Network.model
    title: str               # as papers and tables call it
    adaptive: bool           # owns theta_v and an NDS (the threshold follows the NDS)
    init_state: Callable     # (layer, settings, random_nds) -> None, after the layer's weights
    backward: str = 'published'  # a BACKWARDS name


NEURONS = {neuron.name: neuron for neuron in (
    NeuronType('LIF', 'LIF', adaptive=False, init_state=no_state),
    NeuronType('ALIF', 'TA-LIF', adaptive=True, init_state=ta_lif_state),
)}
# The output layer of every published model is a plain LIF neuron (or none: the softmax read-out).
OUTPUT_NEURON = NEURONS['LIF']


def neuron_by_title(title):
    """``'TA-LIF'`` (or ``'talif'``) -> the ``ALIF`` entry; also accepts the names themselves."""
    def key(text):
        return text.upper().replace('-', '')
    for neuron in NEURONS.values():
        if key(title) in (key(neuron.name), key(neuron.title)):
            return neuron
    raise KeyError(f"unknown neuron {title!r} (one of {', '.join(NEURONS)})")
