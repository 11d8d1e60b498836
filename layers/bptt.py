"""The exact backpropagation-through-time (BPTT) gradient rule of the spiking neuron.

The published backward (SPEC §4, :class:`layers.neuron.SpikeFunction`) takes the surrogate at the
static threshold ``V`` and lets no gradient cross time steps through the membrane, the reset or
the adaptive threshold. An attack that only sees that rule may be weaker than it could be
(gradient masking), and training through it follows an approximation of the gradient. This rule
is the *exact* gradient of the same forward, with only the spike's step replaced by a chosen
surrogate (``layers/surrogate.py``); for LIF / TA-LIF:
```
u_t     = leak * v_{t-1} + I_t                         (v = the membrane after the reset)
theta_t = theta_{t-1} + theta_v * (u_t - NDS_t)        (TA-LIF; LIF: theta_t = V)
s_t     = H(u_t - theta_t)   with  ds_t/du_t = g(u_t - theta_t),  ds_t/dtheta_t = -g(...)
v_t     = u_t * (1 - s_t)                              (the reset, with its -u_t ds_t term)
y_t     = y_{t-1} + (s_t - y_{t-1}) / tau_s            (the layer's output)
```
Gradients flow to the input current and to the type's learnable state (``theta_v``); none to the
NDS (a buffer) or ``V``. The adjoint recursion is each neuron type's BPTT step
(``layers/dynamics.py``). The forward *is* :func:`layers.neuron.neuron_forward` (the published
loop), so the outputs are the model's own, bit for bit (float64; on CUDA float32 the published
rule may use the Triton kernel, which agrees to float32 rounding). It is one entry of the
gradient-rule registry (``layers/gradients.py``): attacks switch it on with ``use_gradient_path``,
training with ``Network.train_gradient``.

Speed: one autograd node per layer. On the CPU (float32/float64) the backward's adjoint
recursion is one compiled C loop over the elements (``layers/bptt_cpu.py``: a fifth to a third of
an attack step was the PyTorch loop's dozen element-wise passes per time step); elsewhere, or
without a C compiler, it is that PyTorch loop (``layers/dynamics.py``), a few fused in-place
element-wise ops per step. Both write TA-LIF's ``dL/dI`` over its saved membrane and allocate
LIF's (a second backward through a LIF layer is then the same).
"""
import math

import torch

from . import neuron
from .surrogate import SURROGATES

PATH_PREFIX = 'bptt'
DEFAULT_SURROGATE = 'published'


def _format_number(value):
    text = repr(float(value))
    return text[:-2] if text.endswith('.0') else text


class BpttSpikeFunction(torch.autograd.Function):
    """Forward: :func:`layers.neuron.neuron_forward` (the published loop), keeping what the
    type's BPTT step needs. Backward: the type's ``bptt_backward`` with the surrogate
    ``SURROGATES[surrogate].derivative(u_t - theta_t, sharpness)``. Same outputs as :class:`layers.neuron.SpikeFunction`."""

    @staticmethod
    def forward(ctx, dynamics, current, tau_m, tau_s, threshold, record_nds, surrogate,
                sharpness, *state):
        trace, membrane, loop, mem_mean = neuron.neuron_forward(
            dynamics, current, state, tau_m, tau_s, threshold, record_nds, keep_membrane=True,
            keep_thresholds=True)
        ctx.save_for_backward(membrane, *loop.bptt_saved())
        ctx.dynamics, ctx.threshold, ctx.tau_m, ctx.tau_s = dynamics, threshold, tau_m, tau_s
        ctx.surrogate, ctx.sharpness = surrogate, sharpness
        if mem_mean is not None:
            ctx.mark_non_differentiable(mem_mean)
        return trace, mem_mean

    @staticmethod
    def backward(ctx, grad_traces, _grad_mem_mean):
        if getattr(ctx, 'consumed', False):
            raise RuntimeError("the BPTT gradient path's TA-LIF backward runs once per forward "
                               "(retain_graph=True and a second backward are not supported)")
        ctx.consumed = ctx.dynamics.bptt_consumes_saved
        membrane, *saved = ctx.saved_tensors
        grad_current, state_grads = ctx.dynamics.bptt_backward(
            grad_traces, membrane, saved, ctx.threshold, ctx.tau_m, ctx.tau_s, ctx.surrogate,
            ctx.sharpness)
        state_grads = [grad if needed else None
                       for grad, needed in zip(state_grads, ctx.needs_input_grad[8:])]
        return (None, grad_current, None, None, None, None, None, None, *state_grads)


class BpttPath:
    """A gradient path (``SpikingLayer.gradient_path``): exact BPTT with one surrogate.

    ``BpttPath(surrogate='published', sharpness=None)``: ``surrogate`` a key of
    :data:`layers.surrogate.SURROGATES`, ``sharpness`` ``k > 0`` (``None``: the surrogate's
    default). Called as :func:`layers.neuron.spike` is; without a gradient to compute it *is*
    ``spike`` (same forward, and its fastest form).
    """

    def __init__(self, surrogate=DEFAULT_SURROGATE, sharpness=None):
        if surrogate not in SURROGATES:
            raise ValueError(f"unknown surrogate {surrogate!r}; choices: {', '.join(SURROGATES)}")
        if sharpness is None:
            sharpness = SURROGATES[surrogate].default_sharpness
        if isinstance(sharpness, bool) or not isinstance(sharpness, (int, float)) or \
                not math.isfinite(sharpness) or sharpness <= 0:
            raise ValueError(f"surrogate sharpness must be a finite number > 0, got {sharpness!r}")
        self.surrogate = surrogate
        self.sharpness = float(sharpness)

    @classmethod
    def from_arguments(cls, arguments, usage):
        """``['<surrogate>', '<sharpness>']`` (each optional), the text after ``bptt:``."""
        if len(arguments) > 2:
            raise ValueError(f"unknown gradient path (too many ':' parts); {usage}")
        surrogate = arguments[0] if arguments else DEFAULT_SURROGATE
        sharpness = None
        if len(arguments) == 2:
            try:
                sharpness = float(arguments[1])
            except ValueError:
                raise ValueError(f"sharpness {arguments[1]!r} is not a number") from None
        if surrogate not in SURROGATES:
            raise ValueError(f"unknown surrogate {surrogate!r}; {usage}")
        return cls(surrogate, sharpness)

    @property
    def name(self):
        return f"{PATH_PREFIX}:{self.surrogate}:{_format_number(self.sharpness)}"

    def __repr__(self):
        return f"BpttPath({self.surrogate!r}, {self.sharpness!r})"

    def __eq__(self, other):
        return isinstance(other, BpttPath) and (other.surrogate, other.sharpness) == (
            self.surrogate, self.sharpness)

    def __hash__(self):
        return hash((self.surrogate, self.sharpness))

    def __call__(self, dynamics, current, state, tau_m, tau_s, threshold, record_nds=False):
        if not neuron.needs_gradient(current, state):
            return neuron.spike(dynamics, current, state, tau_m, tau_s, threshold, record_nds)
        return BpttSpikeFunction.apply(dynamics, current, tau_m, tau_s, threshold, record_nds,
                                       self.surrogate, self.sharpness,
                                       *state)
