"""The LIF / TA-LIF spiking neuron with the TSSL-BP-style surrogate backward (SPEC §4).

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
(``layers/fused.py``): one launch per layer rather than several per time step.
"""
import torch

from . import fused

SURROGATE_WIDTH = 0.2  # the 0.2 of f = sigmoid(clamp(-(u - V)/0.2, -8, 8))
SURROGATE_CLAMP = 8
THETA_V_GRAD_SCALE = 0.1  # the published code scales the theta_v gradient by 0.1


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


def neuron_forward(current, theta_v, nds, tau_m, tau_s, threshold, record_nds, keep_membrane):
    """The step loop of SPEC §4 on ``current[T, B, *shape]``.

    Returns ``(trace y [T, B, *shape], membrane, error_sum, mem_mean)``: ``membrane`` the pre-reset
    ``u_t`` of every step ``[T, B, *shape]`` if ``keep_membrane`` (else ``None``), ``error_sum``
    the TA-LIF ``E = sum_t e_t`` ``[B, *shape]`` (else ``None``) and ``mem_mean`` the batch-mean
    ``u_t`` ``[*shape, T]`` if ``record_nds`` (else ``None``).
    """
    n_steps = current.shape[0]
    adaptive = theta_v is not None
    leak = 1 - 1 / tau_m  # u - u/tau_m == leak * u
    rate = 1 / tau_s  # y + (s - y)/tau_s == lerp(y, s, 1/tau_s)
    trace = torch.empty_like(current, memory_format=torch.contiguous_format)
    membrane = torch.empty_like(trace) if keep_membrane else None
    u = torch.zeros_like(current[0], memory_format=torch.contiguous_format)  # after the reset
    u_step = None if keep_membrane else torch.empty_like(u)
    if adaptive:
        theta = torch.full_like(u, threshold)
        error_sum = torch.zeros_like(u)
        nds = nds.movedim(-1, 0).contiguous()  # [T, *shape]: one contiguous slice per step
    else:
        theta, error_sum = threshold, None
    mem_means = [] if record_nds else None
    y = None
    for t in range(n_steps):
        u_t = membrane[t] if keep_membrane else u_step
        torch.add(current[t], u, alpha=leak, out=u_t)       # u = u - u/tau_m + I_t
        if adaptive:  # (trace[t] is free until the spike is written: e lives there)
            e = torch.sub(u_t, nds[t], out=trace[t])        # e = u - NDS_t
            theta.addcmul_(theta_v, e)                      # theta = theta + theta_v * e
            error_sum += e                                  # E = E + e
        s_t = torch.gt(u_t, theta, out=trace[t])            # s_t = u > theta, as 0/1
        if record_nds:
            mem_means.append(u_t.mean(0))
        torch.addcmul(u_t, u_t, s_t, value=-1, out=u)       # u = u * (1 - s_t), exactly
        if y is None:
            y = s_t.mul_(rate)                              # y = 0 + (s_t - 0)/tau_s
        else:
            y = torch.lerp(y, s_t, rate, out=s_t)           # y = y + (s_t - y)/tau_s
    mem_mean = torch.stack(mem_means, dim=-1) if record_nds else None
    return trace, membrane, error_sum, mem_mean


class SpikeFunction(torch.autograd.Function):
    """Forward: the membrane/threshold/trace loop of SPEC §4. Backward: the custom rule of SPEC §4
    (no gradient through the membrane across steps, to the NDS, or to the threshold state).

    Inputs: current ``[T, B, *shape]``; ``theta_v`` and ``nds`` (``[*shape]`` and ``[*shape, T]``)
    or ``None`` for plain LIF. Returns the trace ``y`` ``[T, B, *shape]`` and, if ``record_nds``,
    the batch-mean pre-reset membrane potential ``[*shape, T]`` (else ``None``).
    """

    @staticmethod
    def forward(ctx, current, theta_v, nds, tau_m, tau_s, threshold, record_nds):
        if fused.available(current) and not record_nds:
            trace, f, error_sum = fused.neuron_forward(
                current, theta_v, nds, tau_m, tau_s, threshold, SURROGATE_WIDTH, SURROGATE_CLAMP,
                store_f=True)
            mem_mean = None
        else:
            trace, membrane, error_sum, mem_mean = neuron_forward(
                current, theta_v, nds, tau_m, tau_s, threshold, record_nds, keep_membrane=True)
            # f = sigmoid(clamp(-(u_t - V)/0.2, -8, 8)) for every step at once, in place: the
            # backward's surrogate f(1 - f)/0.2 needs nothing else of the membrane.
            f = membrane.sub_(threshold).div_(-SURROGATE_WIDTH)
            f = f.clamp_(-SURROGATE_CLAMP, SURROGATE_CLAMP).sigmoid_()
        ctx.tau_s = tau_s
        ctx.adaptive = theta_v is not None
        if ctx.adaptive:
            # sum_b Ebar_b, Ebar_b = E_b / T: all the backward needs of the threshold errors.
            ctx.save_for_backward(f, (error_sum / current.shape[0]).sum(0))
        else:
            ctx.save_for_backward(f)
        if mem_mean is not None:
            ctx.mark_non_differentiable(mem_mean)
        return trace, mem_mean

    @staticmethod
    def backward(ctx, grad_traces, _grad_mem_mean):
        f = ctx.saved_tensors[0]
        if fused.available(f):
            grad_current = fused.surrogate_backward(grad_traces, f, ctx.tau_s, SURROGATE_WIDTH)
        else:
            grad_current = trace_backward(grad_traces, ctx.tau_s)           # A_t
            # dL/dI_t = A_t * f (1 - f) / 0.2  (sigmoid_backward(A, f) == A * (1 - f) * f)
            torch.ops.aten.sigmoid_backward.grad_input(grad_current, f, grad_input=grad_current)
            grad_current.div_(SURROGATE_WIDTH)
        grad_theta_v = None
        if ctx.adaptive and ctx.needs_input_grad[1]:
            mean_error = ctx.saved_tensors[1]
            # 0.1 * sum_b(Ebar_b * mean_{b,t}(-dL/dI)); the mean does not depend on b.
            grad_theta_v = THETA_V_GRAD_SCALE * mean_error * (-grad_current.mean(dim=(0, 1)))
        return grad_current, grad_theta_v, None, None, None, None, None


def spike(current, theta_v, nds, tau_m, tau_s, threshold, record_nds=False):
    """Functional entry point; see :class:`SpikeFunction`. Without a gradient to compute (e.g.
    under ``torch.no_grad()``), the loop runs without the autograd node and keeps no membrane."""
    needs_grad = torch.is_grad_enabled() and (
        current.requires_grad or (theta_v is not None and theta_v.requires_grad))
    if needs_grad:
        return SpikeFunction.apply(current, theta_v, nds, tau_m, tau_s, threshold, record_nds)
    if fused.available(current) and not record_nds:
        trace, _, _ = fused.neuron_forward(current, theta_v, nds, tau_m, tau_s, threshold,
                                           SURROGATE_WIDTH, SURROGATE_CLAMP, store_f=False)
        return trace, None
    trace, _, _, mem_mean = neuron_forward(current, theta_v, nds, tau_m, tau_s, threshold,
                                           record_nds, keep_membrane=False)
    return trace, mem_mean
