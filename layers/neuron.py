"""The spiking neuron's step loop (SPEC §4) and the published TSSL-BP-style surrogate backward.

The loop and the backward are shared by every neuron type; what a type changes (its membrane
update and threshold, the gradients of its own state) are its step functions in
``layers/dynamics.py``, passed in as ``dynamics`` (a ``neuron_registry.NEURONS`` entry's).

Tensors here are *time-major*: ``[T, B, *neuron_shape]``. Each time step is then a contiguous
slice, which is what makes the step loop cheap; the network converts to and from the public
``[B, C, H, W, T]`` layout once, at its boundaries.

Speed notes. The step loop is a handful of element-wise kernels per time step, each writing into
a preallocated buffer (``out=``) instead of allocating: the spike is compared straight into the
output buffer as 0/1 in the working dtype (no bool tensors, no ``masked_fill``), the reset is one
``addcmul`` and the trace one ``lerp``. The surrogate needs the pre-reset membrane of every step;
it is turned into ``f = sigmoid(...)`` in place, once, for all steps together, and only when a
gradient is wanted. The backward applies the ``[T, T]`` trace kernel as its two-term recurrence
(one ``lerp`` per step) instead of a matrix product with a 5-long inner dimension.
On CUDA (float32 and half types) the loop and the backward run as Triton kernels instead
(``layers/fused.py``, through the type's ``fused_forward``): one launch per layer rather than
several per time step.
"""
import torch

from . import fused
from .surrogate import SURROGATE_CLAMP, SURROGATE_WIDTH


def psp(x, tau_s):
    """The synaptic input filter of SPEC §2 along dim 0 (time): s_t = s_{t-1} - s_{t-1}/tau_s + x_t,
    a_t = s_t / tau_s. Differentiable (plain tensor ops)."""
    s = torch.zeros_like(x[0])
    out = []
    for x_t in x:
        s = s - s / tau_s + x_t
        out.append(s / tau_s)
    return torch.stack(out)


def trace_backward(grad_traces, tau_s):
    """``A_t = sum_{t' >= t} P[t' - t] G_t'`` with ``P[k] = (1/tau_s)(1 - 1/tau_s)^k`` (SPEC §4),
    computed backwards in time as ``A_t = G_t/tau_s + (1 - 1/tau_s) A_{t+1}`` (a ``lerp``)."""
    out = torch.empty_like(grad_traces, memory_format=torch.contiguous_format)
    rate = 1 / tau_s
    torch.mul(grad_traces[-1], rate, out=out[-1])
    for t in range(grad_traces.shape[0] - 2, -1, -1):
        torch.lerp(out[t + 1], grad_traces[t], rate, out=out[t])
    return out


def neuron_forward(dynamics, current, state, tau_m, tau_s, threshold, record_nds, keep_membrane,
                   keep_thresholds=False):
    """The step loop of SPEC §4 on ``current[T, B, *shape]``; ``dynamics`` (a class of
    ``layers/dynamics.py``) and its ``state`` (the layer's tensors it names) give the membrane
    update and the threshold of every step, this loop the spike, the reset and the trace.

    Returns ``(trace y [T, B, *shape], membrane, loop, mem_mean)``: ``membrane`` the pre-reset
    ``u_t`` of every step ``[T, B, *shape]`` if ``keep_membrane`` (else ``None``), ``loop`` the
    dynamics' loop state (what its backwards save: ``published_saved()``, ``bptt_saved()`` with
    ``keep_thresholds``) and ``mem_mean`` the batch-mean ``u_t`` ``[*shape, T]`` if
    ``record_nds`` (else ``None``).
    """
    n_steps = current.shape[0]
    rate = 1 / tau_s  # y + (s - y)/tau_s == lerp(y, s, 1/tau_s)
    trace = torch.empty_like(current, memory_format=torch.contiguous_format)
    membrane = torch.empty_like(trace) if keep_membrane else None
    v = torch.zeros_like(current[0], memory_format=torch.contiguous_format)  # after the reset
    u_step = None if keep_membrane else torch.empty_like(v)
    loop = dynamics(state, v, n_steps, tau_m, threshold, keep_thresholds)
    mem_means = [] if record_nds else None
    y = None
    for t in range(n_steps):
        u_t = membrane[t] if keep_membrane else u_step
        # (trace[t] is free until the spike is written: the step may use it as scratch)
        theta = loop.step(t, current[t], v, u_t, trace[t])  # u_t, and theta_t
        s_t = torch.gt(u_t, theta, out=trace[t])            # s_t = u > theta, as 0/1
        if record_nds:
            mem_means.append(u_t.mean(0))
        torch.addcmul(u_t, u_t, s_t, value=-1, out=v)       # u = u * (1 - s_t), exactly
        if y is None:
            y = s_t.mul_(rate)                              # y = 0 + (s_t - 0)/tau_s
        else:
            y = torch.lerp(y, s_t, rate, out=s_t)           # y = y + (s_t - y)/tau_s
    mem_mean = torch.stack(mem_means, dim=-1) if record_nds else None
    return trace, membrane, loop, mem_mean


def _fused(dynamics, current, record_nds):
    """Whether the Triton kernels run this forward (they do not record the NDS)."""
    return dynamics.fused_forward is not None and fused.available(current) and not record_nds


class SpikeFunction(torch.autograd.Function):
    """Forward: the step loop of SPEC §4. Backward: the published rule of SPEC §4 (no gradient
    through the membrane across steps, to the NDS, or to the threshold state) -- the surrogate
    ``dL/dI`` here, the gradients of the type's own state from its ``published_grads``.

    Inputs: ``dynamics``, current ``[T, B, *shape]``, the constants, then the type's state
    tensors. Returns the trace ``y`` ``[T, B, *shape]`` and, if ``record_nds``, the batch-mean
    pre-reset membrane potential ``[*shape, T]`` (else ``None``).
    """

    @staticmethod
    def forward(ctx, dynamics, current, tau_m, tau_s, threshold, record_nds, *state):
        if _fused(dynamics, current, record_nds):
            trace, f, saved = dynamics.fused_forward(current, state, tau_m, tau_s, threshold,
                                                     store_f=True)
            mem_mean = None
        else:
            trace, membrane, loop, mem_mean = neuron_forward(
                dynamics, current, state, tau_m, tau_s, threshold, record_nds, keep_membrane=True)
            # f = sigmoid(clamp(-(u_t - V)/0.2, -8, 8)) for every step at once, in place: the
            # backward's surrogate f(1 - f)/0.2 needs nothing else of the membrane.
            f = membrane.sub_(threshold).div_(-SURROGATE_WIDTH)
            f = f.clamp_(-SURROGATE_CLAMP, SURROGATE_CLAMP).sigmoid_()
            saved = loop.published_saved()
        ctx.dynamics, ctx.tau_s = dynamics, tau_s
        ctx.save_for_backward(f, *saved)
        if mem_mean is not None:
            ctx.mark_non_differentiable(mem_mean)
        return trace, mem_mean

    @staticmethod
    def backward(ctx, grad_traces, _grad_mem_mean):
        f, *saved = ctx.saved_tensors
        if fused.available(f):
            grad_current = fused.surrogate_backward(grad_traces, f, ctx.tau_s, SURROGATE_WIDTH)
        else:
            grad_current = trace_backward(grad_traces, ctx.tau_s)           # A_t
            # dL/dI_t = A_t * f (1 - f) / 0.2  (sigmoid_backward(A, f) == A * (1 - f) * f)
            torch.ops.aten.sigmoid_backward.grad_input(grad_current, f, grad_input=grad_current)
            grad_current.div_(SURROGATE_WIDTH)
        state_grads = ctx.dynamics.published_grads(grad_current, saved, ctx.needs_input_grad[6:])
        return (None, grad_current, None, None, None, None, *state_grads)


def needs_gradient(current, state):
    """Whether a forward must build an autograd node (else no membrane is kept)."""
    return torch.is_grad_enabled() and (
        current.requires_grad or any(tensor.requires_grad for tensor in state))


def spike(dynamics, current, state, tau_m, tau_s, threshold, record_nds=False):
    """The published gradient rule (see :class:`SpikeFunction`): ``(trace, batch-mean membrane or
    None)``. Without a gradient to compute (e.g. under ``torch.no_grad()``), the loop runs without
    the autograd node and keeps no membrane."""
    if needs_gradient(current, state):
        return SpikeFunction.apply(dynamics, current, tau_m, tau_s, threshold, record_nds, *state)
    if _fused(dynamics, current, record_nds):
        trace, _, _ = dynamics.fused_forward(current, state, tau_m, tau_s, threshold,
                                             store_f=False)
        return trace, None
    trace, _, _, mem_mean = neuron_forward(dynamics, current, state, tau_m, tau_s, threshold,
                                           record_nds, keep_membrane=False)
    return trace, mem_mean
