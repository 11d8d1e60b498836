"""The published neuron called as the tests build its inputs: ``theta_v``/``nds`` tensors for
TA-LIF, ``None`` for LIF (layers/ itself passes each type's dynamics and state explicitly)."""
from layers import neuron
from layers.dynamics import Lif, TaLif


def dynamics_and_state(theta_v, nds):
    return (Lif, ()) if theta_v is None else (TaLif, (theta_v, nds))


def spike(current, theta_v, nds, *args, path=neuron.spike, **kwargs):
    """``path`` (default: the published rule) on the LIF or TA-LIF neuron."""
    dynamics, state = dynamics_and_state(theta_v, nds)
    return path(dynamics, current, state, *args, **kwargs)
