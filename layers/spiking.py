"""What conv and linear layers share: the spiking neuron and its state-dict entries."""
import torch.nn as nn

from .gradients import BACKWARDS


class SpikingLayer(nn.Module):
    """Base of the weighted layers. ``neuron_shape`` is the layer's output shape ``[C, H, W]``
    (``[N, 1, 1]`` for linear layers); ``neuron`` a ``neuron_registry.NEURONS`` entry, or None
    for no neuron (the softmax read-out).

    TA-LIF layers (``model: ALIF``, every spiking layer but ``output``) own ``theta_v`` (trainable,
    initialised to ``1/tau_v``) and ``target_train``, the NDS: a buffer, so that it is saved and
    loaded with the state dict but never trained or decayed (SPEC §4 fix).
    """

    def __init__(self, name, neuron_shape, threshold, settings, neuron):
        super().__init__()
        self.name = name
        self.neuron_shape = tuple(neuron_shape)
        self.neuron = neuron
        self.threshold = float(threshold) if neuron is not None else None
        self.tau_m, self.tau_s = settings.tau_m, settings.tau_s
        self.register_parameter('theta_v', None)
        self.register_buffer('target_train', None)
        # Another gradient path for this layer's neuron (layers/gradients.py: set by
        # use_gradient_path, for attacks and Network.train_gradient), or None for the neuron
        # type's own rule. A plain attribute: not in the state dict.
        self.gradient_path = None

    def init_neuron(self, settings, random_nds):
        """Create the neuron's state; called after the weights so that the RNG order is the same
        for every layer type."""
        if self.neuron is not None:
            self.neuron.init_state(self, settings, random_nds)

    def fire(self, current, record_nds):
        """``current`` ``[T, B, *neuron_shape]`` -> ``(trace, batch-mean membrane or None)``."""
        if self.neuron is None:
            return current, None
        path = self.gradient_path or BACKWARDS[self.neuron.backward].path
        dynamics = self.neuron.dynamics
        state = tuple(getattr(self, name) for name in dynamics.state_names)
        return path(dynamics, current, state, self.tau_m, self.tau_s, self.threshold, record_nds)

    def clip_weights(self):
        """The published weight clipper: weights to [-4, 4], theta_v >= 0."""
        self.weight.clamp_(-4, 4)
        if self.theta_v is not None:
            self.theta_v.clamp_(min=0)

    def extra_repr(self):
        kind = self.neuron.title if self.neuron is not None else 'no neuron'
        return f"name={self.name!r}, out={list(self.neuron_shape)}, {kind}, threshold={self.threshold}"
