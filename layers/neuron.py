"""The LIF / TA-LIF spiking neuron with the TSSL-BP-style surrogate backward (SPEC §4).

Tensors here are *time-major*: ``[T, B, *neuron_shape]``. Each time step is then a contiguous
slice, which is what makes the step loop cheap; the network converts to and from the public
``[B, C, H, W, T]`` layout once, at its boundaries.
"""
import torch

SURROGATE_WIDTH = 0.2  # the 0.2 of f = sigmoid(clamp(-(u - V)/0.2, -8, 8))
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


def trace_kernel(n_steps, tau_s, dtype, device):
    """M[t, t'] = P[t' - t] = (1/tau_s)(1 - 1/tau_s)^(t'-t) for t' >= t, else 0.

    dL/ds_t = sum_t' M[t, t'] dL/dy_t'  (how a spike at t feeds every later trace value)."""
    steps = torch.arange(n_steps, device=device)
    lag = steps[None, :] - steps[:, None]
    decay = (1 - 1 / tau_s) ** lag.clamp(min=0).to(dtype)
    return torch.where(lag >= 0, decay / tau_s, torch.zeros((), dtype=dtype, device=device))


class SpikeFunction(torch.autograd.Function):
    """Forward: the membrane/threshold/trace loop of SPEC §4. Backward: the custom rule of SPEC §4
    (no gradient through the membrane across steps, to the NDS, or to the threshold state).

    Inputs: current ``[T, B, *shape]``; ``theta_v`` and ``nds`` (``[*shape]`` and ``[*shape, T]``)
    or ``None`` for plain LIF. Returns the trace ``y`` ``[T, B, *shape]`` and, if ``record_nds``,
    the batch-mean pre-reset membrane potential ``[*shape, T]`` (else ``None``).
    """

    @staticmethod
    def forward(ctx, current, theta_v, nds, tau_m, tau_s, threshold, record_nds):
        adaptive = theta_v is not None
        u = torch.zeros_like(current[0])
        y = torch.zeros_like(current[0])
        theta = torch.full_like(current[0], threshold) if adaptive else threshold
        error_sum = torch.zeros_like(current[0]) if adaptive else None
        traces = torch.empty_like(current)
        surrogate = torch.empty_like(current)
        mem_means = [] if record_nds else None
        for t in range(current.shape[0]):
            u = u - u / tau_m + current[t]
            if adaptive:
                e = u - nds[..., t]
                theta = theta + theta_v * e
                error_sum += e
            spike = u > theta
            # f(1-f)/0.2 with f = sigmoid(clamp(-(u - V)/0.2, -8, 8)); V is the static threshold.
            f = torch.sigmoid(torch.clamp(-(u - threshold) / SURROGATE_WIDTH, -8, 8))
            torch.mul(f * (1 - f), 1 / SURROGATE_WIDTH, out=surrogate[t])
            if record_nds:
                mem_means.append(u.mean(0))
            u = u.masked_fill(spike, 0)
            y = y + (spike.to(y.dtype) - y) / tau_s
            traces[t] = y
        ctx.tau_s = tau_s
        ctx.adaptive = adaptive
        if adaptive:
            # sum_b Ebar_b, Ebar_b = E_b / T: all the backward needs of the threshold errors.
            ctx.save_for_backward(surrogate, (error_sum / current.shape[0]).sum(0))
        else:
            ctx.save_for_backward(surrogate)
        mem_mean = torch.stack(mem_means, dim=-1) if record_nds else None
        if mem_mean is not None:
            ctx.mark_non_differentiable(mem_mean)
        return traces, mem_mean

    @staticmethod
    def backward(ctx, grad_traces, _grad_mem_mean):
        surrogate = ctx.saved_tensors[0]
        n_steps = surrogate.shape[0]
        kernel = trace_kernel(n_steps, ctx.tau_s, grad_traces.dtype, grad_traces.device)
        grad_spikes = (kernel @ grad_traces.reshape(n_steps, -1)).view_as(grad_traces)
        grad_current = grad_spikes * surrogate
        grad_theta_v = None
        if ctx.adaptive and ctx.needs_input_grad[1]:
            mean_error = ctx.saved_tensors[1]
            # 0.1 * sum_b(Ebar_b * mean_{b,t}(-dL/dI)); the mean does not depend on b.
            grad_theta_v = THETA_V_GRAD_SCALE * mean_error * (-grad_current.mean(dim=(0, 1)))
        return grad_current, grad_theta_v, None, None, None, None, None


def spike(current, theta_v, nds, tau_m, tau_s, threshold, record_nds=False):
    """Functional entry point; see :class:`SpikeFunction`."""
    return SpikeFunction.apply(current, theta_v, nds, tau_m, tau_s, threshold, record_nds)
