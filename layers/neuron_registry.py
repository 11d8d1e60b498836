"""The neuron registry: every neuron type (the YAML's ``Network.model``), by name.

A **neuron type** says which state a spiking layer owns and how it is initialised
(``init_state``), how the neuron steps through time (``dynamics``: its forward step, its
published backward and its BPTT step, ``layers/dynamics.py``) and which gradient rule its
spikes use by default (``backward``, a name in ``layers.gradients.BACKWARDS``).

Adding a neuron type = one ``NEURONS`` entry + its dynamics class (and its ``init_state`` when it
owns state). Every gradient rule then works for it: the rules call the type's step functions.
"""
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

import torch
import torch.nn as nn

from .dynamics import Lif, TaLif


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
    dynamics: type           # its step functions (layers/dynamics.py)
    backward: str = 'published'  # its default gradient rule (layers.gradients.BACKWARDS)


NEURONS = MappingProxyType({neuron.name: neuron for neuron in (
    NeuronType('LIF', 'LIF', adaptive=False, init_state=no_state, dynamics=Lif),
    NeuronType('ALIF', 'TA-LIF', adaptive=True, init_state=ta_lif_state, dynamics=TaLif),
)})
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
