"""An exact backpropagation-through-time (BPTT) gradient of the LIF / TA-LIF neuron, for attacks.

The published backward (SPEC §4, :class:`layers.neuron.SpikeFunction`) is a training rule: it
takes the surrogate at the static threshold ``V`` and lets no gradient cross time steps through
the membrane, the reset or the adaptive threshold. An attack that only sees that rule may be
weaker than it could be (gradient masking). This module gives the *exact* gradient of the same
forward, with only the spike's step replaced by a chosen surrogate:
```
u_t     = leak * v_{t-1} + I_t                         (v = the membrane after the reset)
theta_t = theta_{t-1} + theta_v * (u_t - NDS_t)        (TA-LIF; LIF: theta_t = V)
s_t     = H(u_t - theta_t)   with  ds_t/du_t = g(u_t - theta_t),  ds_t/dtheta_t = -g(...)
v_t     = u_t * (1 - s_t)                              (the reset, with its -u_t ds_t term)
y_t     = y_{t-1} + (s_t - y_{t-1}) / tau_s            (the layer's output)
```
Gradients flow to the input current and to ``theta_v``; none to the NDS (a buffer) or ``V``.
The forward *is* :func:`layers.neuron.neuron_forward` (the published loop), so the outputs are
the model's own, bit for bit (float64; on CUDA float32 the model may use the Triton kernel, which
agrees to float32 rounding). Training and the published attacks keep the published backward:
this path is switched on per model with :func:`use_gradient_path` (it sets the
``SpikingLayer.gradient_path`` hook).

Speed: one autograd node per layer. The backward is the adjoint recursion written out by hand
(:func:`bptt_backward`): the surrogate slope for all steps at once, then one pass backwards over
time of a few fused in-place element-wise ops per step; it allocates one ``[T, B, ...]`` tensor
(two for LIF), reusing the saved ones.
"""
import math
from contextlib import contextmanager
from types import MappingProxyType
from typing import Callable, NamedTuple

import torch

from . import neuron

PUBLISHED = 'published'
PATH_PREFIX = 'bptt'


# --- surrogates: g(x, k) = d spike / dx at x = u_t - theta_t, k the sharpness -------------------
# The sharpness k > 0 is an inverse width for every surrogate: larger k, narrower and taller.
# Every surrogate integrates to 1 over x (the height of the step it replaces; the published one
# only inside its clamp, |x| < 8/k: beyond, its slope stays at k f(1 - f), f = sigmoid(8)). The
# default sharpness of each makes its peak g(0) equal the published one's, 0.25/0.2 = 1.25, so
# that a choice of surrogate changes the shape of the gradient, not its scale.
# Each works on its own temporaries in place (a surrogate is evaluated on whole [T, B, ...]
# tensors in the backward, where memory passes are the cost) and returns a constant (no graph).

def _sigmoid_slope(f, scale):
    """``scale * f * (1 - f)`` in place in ``f`` (one pass: sigmoid's own backward kernel)."""
    return torch.ops.aten.sigmoid_backward.grad_input(
        torch.tensor(scale, dtype=f.dtype, device=f.device), f, grad_input=f)


@torch.no_grad()
def _published(x, k):
    """The published surrogate at the dynamic threshold: with width ``w = 1/k`` (default 0.2),
    ``f = sigmoid(clamp(-x/w, -8, 8))``, ``g = f (1 - f) / w``."""
    width = 1 / k
    f = torch.div(x, -width).clamp_(-neuron.SURROGATE_CLAMP, neuron.SURROGATE_CLAMP).sigmoid_()
    return _sigmoid_slope(f, 1 / width)


@torch.no_grad()
def _sigmoid(x, k):
    """``g = k sigmoid(kx) (1 - sigmoid(kx))`` (SpikingJelly ``Sigmoid``, alpha = k)."""
    return _sigmoid_slope(torch.mul(x, k).sigmoid_(), k)


@torch.no_grad()
def _fast_sigmoid(x, k):
    """``g = (k/2) / (1 + k|x|)^2``: the SuperSpike / fast-sigmoid shape (Zenke & Ganguli 2018;
    snntorch's ``fast_sigmoid`` with slope k), normalised to unit area as SpikingJelly's
    ``SoftSign`` (alpha = k)."""
    return torch.abs(x).mul_(k).add_(1).pow_(-2).mul_(k / 2)


@torch.no_grad()
def _arctan(x, k):
    """``g = (k/2) / (1 + (pi/2 k x)^2)`` (SpikingJelly ``ATan``, alpha = k)."""
    return torch.mul(x, math.pi / 2 * k).square_().add_(1).reciprocal_().mul_(k / 2)


@torch.no_grad()
def _triangle(x, k):
    """``g = k max(0, 1 - k|x|)``: a triangle of half-width ``1/k`` (Esser et al. 2016,
    Bellec et al. 2018)."""
    return torch.abs(x).mul_(-k).add_(1).clamp_(min=0).mul_(k)


@torch.no_grad()
def _rectangle(x, k):
    """``g = k`` where ``|x| < 1/(2k)``, else 0: the windowed straight-through estimator, a box
    of width ``1/k`` (Wu et al. 2018)."""
    return torch.abs(x).lt_(1 / (2 * k)).mul_(k)


class Surrogate(NamedTuple):
    derivative: Callable  # (x, sharpness) -> d spike / dx, element-wise
    default_sharpness: float


SURROGATES = MappingProxyType({
    'published': Surrogate(_published, 1 / neuron.SURROGATE_WIDTH),  # k = 5: width 0.2
    'sigmoid': Surrogate(_sigmoid, 5.0),
    'fast-sigmoid': Surrogate(_fast_sigmoid, 2.5),
    'arctan': Surrogate(_arctan, 2.5),
    'triangle': Surrogate(_triangle, 1.25),
    'rectangle': Surrogate(_rectangle, 1.25),
})


def _format_number(value):
    text = repr(float(value))
    return text[:-2] if text.endswith('.0') else text


# --- the autograd function ----------------------------------------------------------------------

def bptt_backward(grad_traces, membrane, keep, slope, leak, tau_s, theta_v=None, nds=None):
    """The adjoint recursion of the loop in the module docstring, backwards in time.

    ``grad_traces`` ``G_t = dL/dy_t``, ``membrane`` the pre-reset ``u_t``, ``keep`` ``1 - s_t``
    and ``slope`` ``g_t = ds_t/du_t`` (all ``[T, B, *shape]``); ``theta_v`` ``[*shape]`` and
    the time-major NDS ``[T, *shape]`` for TA-LIF (``e_t = u_t - NDS_t``). Returns
    ``(dL/dI, dL/dtheta_v or None)``. ``membrane``,
    ``keep`` and ``slope`` are used as scratch (overwritten); ``dL/dI`` is returned in ``slope``.

    With ``A_t = dL/ds_t`` through the trace alone (SPEC §4's ``A_t``,
    ``A_t = G_t/tau_s + (1 - 1/tau_s) A_{t+1}``), ``U_t = dL/du_t`` and ``Th_t = dL/dtheta_t``
    (total), and ``U_T = Th_T = 0``:
    ```
    dL/ds_t = A_t - leak * u_t * U_{t+1}            (the reset: v_t = u_t - u_t s_t)
    Th_t    = Th_{t+1} - g_t * dL/ds_t              (theta_{t+1} = theta_t + ...; s_t sees -theta_t)
    U_t     = leak (1 - s_t) U_{t+1} + g_t dL/ds_t + theta_v Th_t
            = g_t A_t + leak ((1 - s_t) - g_t u_t) U_{t+1} + theta_v Th_t
    dL/dI_t = U_t,   dL/dtheta_v = sum_{t,b} Th_t e_t
    ```
    The recursion holds for any real ``s_t`` (tests check it against finite differences of a
    smooth neuron), not only for 0/1 spikes. Speed: one pass backwards over time, a few fused ops
    per step on ``[B, *shape]`` slices (which stay in cache), no ``[T, B, ...]`` allocation.
    """
    rate = 1 / tau_s
    adaptive = theta_v is not None
    trace_grad = grad_threshold = grad_theta_v = spike_grad = error = None  # A_t, Th_t, ...
    later = None                                                     # U_{t+1}
    for t in range(grad_traces.shape[0] - 1, -1, -1):
        if trace_grad is None:
            trace_grad = grad_traces[t] * rate
        else:
            trace_grad.lerp_(grad_traces[t], rate)       # A_t = A_{t+1} + (G_t - A_{t+1})/tau_s
        if adaptive:
            error = torch.sub(membrane[t], nds[t], out=error)  # e_t, before u_t is overwritten
            slope_membrane = membrane[t].mul_(slope[t])  # g_t u_t
            carry = keep[t].sub_(slope_membrane)         # c_t = (1 - s_t) - g_t u_t
        else:
            carry = keep[t].addcmul_(slope[t], membrane[t], value=-1)
        grad = slope[t].mul_(trace_grad)                 # g_t A_t, then U_t in place
        if adaptive:
            # g_t dL/ds_t = g_t A_t - leak g_t u_t U_{t+1};  Th_t = Th_{t+1} - g_t dL/ds_t
            if later is None:
                grad_threshold = torch.neg(grad)
                spike_grad = torch.empty_like(grad)
            else:
                torch.addcmul(grad, slope_membrane, later, value=-leak, out=spike_grad)
                grad_threshold.sub_(spike_grad)
        if later is not None:
            grad.addcmul_(carry, later, value=leak)
        if adaptive:
            grad.addcmul_(theta_v, grad_threshold)
            if grad_theta_v is None:
                grad_theta_v = grad_threshold * error
            else:
                grad_theta_v.addcmul_(grad_threshold, error)
        later = grad
    if adaptive:
        grad_theta_v = grad_theta_v.sum(0)
    return slope, grad_theta_v


class BpttSpikeFunction(torch.autograd.Function):
    """Forward: :func:`layers.neuron.neuron_forward` (the published loop). Backward:
    :func:`bptt_backward` with the surrogate ``derivative(u_t - theta_t, sharpness)``.
    Same inputs and outputs as :class:`layers.neuron.SpikeFunction`, plus the surrogate."""

    @staticmethod
    def forward(ctx, current, theta_v, nds, tau_m, tau_s, threshold, record_nds, derivative,
                sharpness):
        trace, membrane, _, mem_mean = neuron.neuron_forward(
            current, theta_v, nds, tau_m, tau_s, threshold, record_nds, keep_membrane=True)
        if theta_v is not None:
            # theta_t of every step, by the loop's own ops (sub, then addcmul in step order), so
            # that u_t > theta_t in the backward are the spikes the forward fired.
            nds = nds.movedim(-1, 0).contiguous()  # [T, *shape]
            thresholds = torch.empty_like(membrane)
            theta = torch.full_like(membrane[0], threshold)
            error = torch.empty_like(theta)
            for t in range(membrane.shape[0]):
                torch.sub(membrane[t], nds[t], out=error)
                theta = torch.addcmul(theta, theta_v, error, out=thresholds[t])
            ctx.save_for_backward(membrane, thresholds, theta_v, nds)
        else:
            ctx.save_for_backward(membrane)
        ctx.threshold, ctx.tau_m, ctx.tau_s = threshold, tau_m, tau_s
        ctx.derivative, ctx.sharpness = derivative, sharpness
        if mem_mean is not None:
            ctx.mark_non_differentiable(mem_mean)
        return trace, mem_mean

    @staticmethod
    def backward(ctx, grad_traces, _grad_mem_mean):
        # TA-LIF: the saved membrane and thresholds are consumed in place (fresh [T, B, ...]
        # memory is what costs most here), so this backward can run only once.
        if getattr(ctx, 'consumed', False):
            raise RuntimeError("the BPTT gradient path's TA-LIF backward runs once per forward "
                               "(retain_graph=True and a second backward are not supported)")
        membrane = ctx.saved_tensors[0]
        adaptive = len(ctx.saved_tensors) > 1
        ctx.consumed = adaptive
        if adaptive:
            _, thresholds, theta_v, nds = ctx.saved_tensors
            distance = torch.sub(membrane, thresholds, out=thresholds)
        else:
            theta_v = nds = None
            distance = membrane - ctx.threshold
        slope = ctx.derivative(distance, ctx.sharpness)
        # 1 - s_t, s_t = [u_t > theta_t] = [u_t - theta_t > 0] (exact: a float difference is 0
        # only for equal operands); in place, as 0/1 in the working dtype.
        keep = distance.le_(0)
        grad_current, grad_theta_v = bptt_backward(
            grad_traces, membrane, keep, slope, 1 - 1 / ctx.tau_m, ctx.tau_s, theta_v, nds)
        if not ctx.needs_input_grad[1]:
            grad_theta_v = None
        return grad_current, grad_theta_v, None, None, None, None, None, None, None


# --- the public path object and its switch ------------------------------------------------------

class BpttPath:
    """The ``SpikingLayer.gradient_path`` hook for exact BPTT with one surrogate.

    ``BpttPath(surrogate='published', sharpness=None)``: ``surrogate`` a key of
    :data:`SURROGATES`, ``sharpness`` ``k > 0`` (``None``: the surrogate's default). Called as
    :func:`layers.neuron.spike` is; without a gradient to compute it *is* ``spike``.
    """

    def __init__(self, surrogate=PUBLISHED, sharpness=None):
        if surrogate not in SURROGATES:
            raise ValueError(f"unknown surrogate {surrogate!r}; choices: {', '.join(SURROGATES)}")
        if sharpness is None:
            sharpness = SURROGATES[surrogate].default_sharpness
        if isinstance(sharpness, bool) or not isinstance(sharpness, (int, float)) or \
                not math.isfinite(sharpness) or sharpness <= 0:
            raise ValueError(f"surrogate sharpness must be a finite number > 0, got {sharpness!r}")
        self.surrogate = surrogate
        self.sharpness = float(sharpness)

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

    def __call__(self, current, theta_v, nds, tau_m, tau_s, threshold, record_nds=False):
        needs_grad = torch.is_grad_enabled() and (
            current.requires_grad or (theta_v is not None and theta_v.requires_grad))
        if not needs_grad:  # the forward is the published one: use its fastest form
            return neuron.spike(current, theta_v, nds, tau_m, tau_s, threshold, record_nds)
        return BpttSpikeFunction.apply(current, theta_v, nds, tau_m, tau_s, threshold, record_nds,
                                       SURROGATES[self.surrogate].derivative, self.sharpness)


def parse_gradient_path(text):
    """``'published'`` (or ``None``) -> ``None``; ``'bptt[:<surrogate>[:<sharpness>]]'`` ->
    :class:`BpttPath`; a ``BpttPath`` is returned as is. Raises ValueError naming the choices."""
    if text is None or isinstance(text, BpttPath):
        return text
    if not isinstance(text, str):
        raise ValueError(f"gradient path must be a string, got {type(text).__name__}")
    usage = (f"expected '{PUBLISHED}' or '{PATH_PREFIX}[:<surrogate>[:<sharpness>]]' with a "
             f"surrogate among {', '.join(SURROGATES)}")
    if text == PUBLISHED:
        return None
    parts = text.split(':')
    if parts[0] != PATH_PREFIX or len(parts) > 3:
        raise ValueError(f"unknown gradient path {text!r}; {usage}")
    surrogate = parts[1] if len(parts) > 1 else PUBLISHED
    sharpness = None
    if len(parts) == 3:
        try:
            sharpness = float(parts[2])
        except ValueError:
            raise ValueError(f"gradient path {text!r}: sharpness {parts[2]!r} is not a number") \
                from None
    if surrogate not in SURROGATES:
        raise ValueError(f"gradient path {text!r}: unknown surrogate {surrogate!r}; {usage}")
    try:
        return BpttPath(surrogate, sharpness)
    except ValueError as exc:
        raise ValueError(f"gradient path {text!r}: {exc}") from None


def gradient_path_name(path):
    """A stable name for reports: ``'published'`` or ``'bptt:<surrogate>:<sharpness>'``."""
    path = parse_gradient_path(path)
    return PUBLISHED if path is None else path.name


@contextmanager
def use_gradient_path(model, path):
    """Within the block, every spiking layer of ``model`` takes its gradient by ``path``
    (``None``/``'published'``: nothing changes; a :class:`BpttPath` or its string). The previous
    hooks are restored afterwards, also when the block raises."""
    path = parse_gradient_path(path)
    if path is None:
        yield model
        return
    # Every spiking layer has the hook (layers.spiking.SpikingLayer); duck-typed so that the
    # neuron registry can list this path without an import cycle.
    layers = [m for m in model.modules() if hasattr(m, 'gradient_path')]
    if not layers:
        # No spiking layer (the ANN twin, layers/ann.py): no spike to take a surrogate of, so
        # every path is the model's plain autograd gradient -- a no-op, on purpose.
        yield model
        return
    previous = [layer.gradient_path for layer in layers]
    try:
        for layer in layers:
            layer.gradient_path = path
        yield model
    finally:
        for layer, hook in zip(layers, previous):
            layer.gradient_path = hook
