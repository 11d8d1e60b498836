"""The step functions of each neuron type (SPEC §4): what a ``neuron_registry.NEURONS`` entry runs.

A neuron type's *dynamics* is a class. The loops that every gradient rule shares call it:

- ``state_names``: the layer's tensors the dynamics read (``SpikingLayer`` attributes), in order.
  They are handed to the step functions as ``state`` and are inputs of the autograd nodes, so a
  learnable one (``theta_v``) gets its gradient from the rule's backward.
- ``Dynamics(state, like, n_steps, tau_m, threshold, keep_thresholds)``: the loop state of one
  forward pass (``like`` a zero ``[B, *shape]`` tensor); its ``step(t, current_t, v, u_t, scratch)``
  is the **forward step**: it writes the pre-reset membrane ``u_t`` from ``v`` (the membrane after
  the last reset) and the input ``current_t``, and returns the threshold ``theta_t`` the spike
  ``u_t > theta_t`` is taken against (``scratch``, a ``[B, *shape]`` buffer, is free until then).
  :func:`layers.neuron.neuron_forward` owns what every type shares: the spike, the reset and the
  synaptic trace.
- ``published_saved()`` / ``published_grads(grad_current, saved, needs)``: the **published
  backward** of the state (SPEC §4; the current's surrogate gradient is the rule's, shared);
  ``fused_forward``: the same forward as Triton kernels on CUDA (``layers/fused.py``), or None.
- ``bptt_saved()`` / ``bptt_backward(...)``: the **BPTT step**: the exact adjoint of the forward
  step above, backwards in time, with the spike's derivative replaced by a surrogate
  (``layers/bptt.py`` is the rule that calls it).

Adding a neuron type = one class here (or in its own module) + one ``NEURONS`` entry.
"""
import torch

from . import bptt_cpu, fused
from .surrogate import SURROGATE_CLAMP, SURROGATE_WIDTH, SURROGATES

THETA_V_GRAD_SCALE = 0.1  # the published code scales the theta_v gradient by 0.1 (SPEC §4)


class Lif:
    """LIF: ``u_t = u_{t-1} - u_{t-1}/tau_m + I_t`` against the fixed threshold ``V``."""
    state_names = ()
    # Whether the BPTT backward overwrites its saved tensors (TA-LIF does: fresh [T, B, ...]
    # memory costs more than the arithmetic); bptt.py then refuses a second backward.
    bptt_consumes_saved = False

    def __init__(self, state, like, n_steps, tau_m, threshold, keep_thresholds):
        self.leak = 1 - 1 / tau_m  # u - u/tau_m == leak * u
        self.threshold = threshold

    def step(self, t, current_t, v, u_t, scratch):
        torch.add(current_t, v, alpha=self.leak, out=u_t)  # u = u - u/tau_m + I_t
        return self.threshold

    # --- the published backward (SPEC §4): nothing but the current has a gradient ---
    def published_saved(self):
        return ()

    @staticmethod
    def published_grads(grad_current, saved, needs):
        return ()

    @staticmethod
    def fused_forward(current, state, tau_m, tau_s, threshold, store_f):
        trace, f, _ = fused.neuron_forward(current, None, None, tau_m, tau_s, threshold,
                                           SURROGATE_WIDTH, SURROGATE_CLAMP, store_f,
                                           adaptive=False)
        return trace, f, ()

    # --- the BPTT step ---
    def bptt_saved(self):
        return ()

    @staticmethod
    def bptt_backward(grad_traces, membrane, saved, threshold, tau_m, tau_s, surrogate,
                      sharpness):
        """``(dL/dI, grads of the state)`` from ``G_t = dL/dy_t`` and the pre-reset membrane;
        ``surrogate`` a key of ``SURROGATES``. On the CPU, the compiled loop of ``bptt_cpu``."""
        # (the membrane is kept: a second backward through a LIF layer gives the same gradient)
        grad_current = torch.empty_like(membrane)
        if bptt_cpu.available(membrane):
            bptt_cpu.adjoint(grad_traces, membrane, surrogate, sharpness, 1 - 1 / tau_m, tau_s,
                             threshold, grad_current)
            return grad_current, ()
        derivative = SURROGATES[surrogate].derivative
        scratch = torch.empty_like(membrane[0])

        def spike_step(t):
            distance = torch.sub(membrane[t], threshold, out=scratch)
            # g_t, and 1 - s_t = [u_t - V <= 0] (exact: a float difference is 0 only for equal
            # operands), in place as 0/1 in the working dtype
            return derivative(distance, sharpness), distance.le_(0)
        return lif_adjoint(grad_traces, membrane, spike_step, 1 - 1 / tau_m, tau_s,
                           grad_current), ()


def lif_adjoint(grad_traces, membrane, spike_step, leak, tau_s, out):
    """The LIF adjoint recursion (see :func:`ta_lif_adjoint`, without the threshold terms):
    ``U_t = g_t A_t + leak ((1 - s_t) - g_t u_t) U_{t+1}``, written into ``out`` (returned).
    ``spike_step(t)`` gives ``(g_t, 1 - s_t)``, ``[B, *shape]`` tensors it may overwrite."""
    rate = 1 / tau_s
    trace_grad = later = None  # A_t, U_{t+1}
    for t in range(grad_traces.shape[0] - 1, -1, -1):
        if trace_grad is None:
            trace_grad = grad_traces[t] * rate
        else:
            trace_grad.lerp_(grad_traces[t], rate)       # A_t = A_{t+1} + (G_t - A_{t+1})/tau_s
        slope, keep = spike_step(t)
        if later is None:
            torch.mul(slope, trace_grad, out=out[t])     # U_{T-1} = g A
        else:
            carry = keep.addcmul_(slope, membrane[t], value=-1)  # c_t = (1 - s_t) - g_t u_t
            torch.addcmul(slope.mul_(trace_grad), carry, later, value=leak, out=out[t])
        later = out[t]
    return out


class TaLif(Lif):
    """TA-LIF: LIF whose threshold follows the NDS, ``theta_t = theta_{t-1} + theta_v (u_t -
    NDS_t)``, from ``theta = V``. ``theta_v`` is learnable; the NDS is a buffer (no gradient)."""
    state_names = ('theta_v', 'target_train')
    bptt_consumes_saved = True

    def __init__(self, state, like, n_steps, tau_m, threshold, keep_thresholds):
        super().__init__(state, like, n_steps, tau_m, threshold, keep_thresholds)
        self.theta_v, nds = state
        self.nds = nds.movedim(-1, 0).contiguous()  # [T, *shape]: one contiguous slice per step
        self.n_steps = n_steps
        self.theta = torch.full_like(like, threshold)
        # theta_t of every step, for the BPTT backward: written by the step's own addcmul, so
        # that u_t > theta_t there are exactly the spikes the forward fired.
        self.thresholds = torch.empty((n_steps, *like.shape), dtype=like.dtype,
                                      device=like.device) if keep_thresholds else None
        # E = sum_t e_t: only the published backward needs it.
        self.error_sum = None if keep_thresholds else torch.zeros_like(like)

    def step(self, t, current_t, v, u_t, scratch):
        super().step(t, current_t, v, u_t, scratch)
        e = torch.sub(u_t, self.nds[t], out=scratch)        # e = u - NDS_t
        if self.thresholds is None:
            self.theta.addcmul_(self.theta_v, e)            # theta = theta + theta_v * e
        else:
            self.theta = torch.addcmul(self.theta, self.theta_v, e, out=self.thresholds[t])
        if self.error_sum is not None:
            self.error_sum += e                             # E = E + e
        return self.theta

    @staticmethod
    def _mean_error(error_sum, n_steps):
        # sum_b Ebar_b, Ebar_b = E_b / T: all the published backward needs of the errors.
        return (error_sum / n_steps).sum(0)

    def published_saved(self):
        return (self._mean_error(self.error_sum, self.n_steps),)

    @staticmethod
    def published_grads(grad_current, saved, needs):
        grad_theta_v = None
        if needs[0]:
            (mean_error,) = saved
            # 0.1 * sum_b(Ebar_b * mean_{b,t}(-dL/dI)); the mean does not depend on b.
            grad_theta_v = THETA_V_GRAD_SCALE * mean_error * (-grad_current.mean(dim=(0, 1)))
        return grad_theta_v, None

    @staticmethod
    def fused_forward(current, state, tau_m, tau_s, threshold, store_f):
        theta_v, nds = state
        trace, f, error_sum = fused.neuron_forward(current, theta_v, nds, tau_m, tau_s, threshold,
                                                   SURROGATE_WIDTH, SURROGATE_CLAMP, store_f,
                                                   adaptive=True)
        return trace, f, (TaLif._mean_error(error_sum, current.shape[0]),)

    def bptt_saved(self):
        return self.thresholds, self.theta_v, self.nds

    @staticmethod
    def bptt_backward(grad_traces, membrane, saved, threshold, tau_m, tau_s, surrogate,
                      sharpness):
        thresholds, theta_v, nds = saved
        if bptt_cpu.available(membrane) and theta_v.shape == membrane.shape[2:]:
            grad_current, grad_theta_v = bptt_cpu.adjoint(
                grad_traces, membrane, surrogate, sharpness, 1 - 1 / tau_m, tau_s, threshold,
                membrane, thresholds=thresholds, theta_v=theta_v.detach(), nds=nds)
            return grad_current, (grad_theta_v, None)
        derivative = SURROGATES[surrogate].derivative

        def spike_step(t):
            # u_t - theta_t, then 1 - s_t in its place (as in Lif.bptt_backward)
            distance = torch.sub(membrane[t], thresholds[t], out=thresholds[t])
            return derivative(distance, sharpness), distance.le_(0)
        grad_current, grad_theta_v = ta_lif_adjoint(grad_traces, membrane, spike_step,
                                                    1 - 1 / tau_m, tau_s, theta_v, nds)
        return grad_current, (grad_theta_v, None)


def ta_lif_adjoint(grad_traces, membrane, spike_step, leak, tau_s, theta_v, nds):
    """The adjoint recursion of the TA-LIF loop, backwards in time.

    ``grad_traces`` ``G_t = dL/dy_t`` and ``membrane`` the pre-reset ``u_t`` (``[T, B,
    *shape]``); ``spike_step(t)`` gives ``(g_t, 1 - s_t)``, ``g_t = ds_t/du_t`` (``[B, *shape]``
    tensors it may overwrite); ``theta_v`` ``[*shape]`` and the time-major NDS ``[T, *shape]``
    (``e_t = u_t - NDS_t``). Returns ``(dL/dI, dL/dtheta_v)``; ``dL/dI`` is written over
    ``membrane`` (each ``u_t`` is last read at its own step).

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
    per step on ``[B, *shape]`` slices (which stay in cache) -- the surrogate too, evaluated step
    by step -- and no ``[T, B, ...]`` allocation (fresh memory, page-faulted in, was the largest
    cost of evaluating the surrogate on whole tensors).
    """
    rate = 1 / tau_s
    trace_grad = grad_threshold = grad_theta_v = spike_grad = error = None  # A_t, Th_t, ...
    later = None                                                     # U_{t+1}
    for t in range(grad_traces.shape[0] - 1, -1, -1):
        if trace_grad is None:
            trace_grad = grad_traces[t] * rate
        else:
            trace_grad.lerp_(grad_traces[t], rate)       # A_t = A_{t+1} + (G_t - A_{t+1})/tau_s
        slope, keep = spike_step(t)
        error = torch.sub(membrane[t], nds[t], out=error)  # e_t, before u_t is overwritten
        slope_membrane = membrane[t].mul_(slope)         # g_t u_t
        carry = keep.sub_(slope_membrane)                # c_t = (1 - s_t) - g_t u_t
        grad = slope.mul_(trace_grad)                    # g_t A_t
        # g_t dL/ds_t = g_t A_t - leak g_t u_t U_{t+1};  Th_t = Th_{t+1} - g_t dL/ds_t
        if later is None:
            grad_threshold = torch.neg(grad)
            spike_grad = torch.empty_like(grad)
            grad = membrane[t].copy_(grad)               # U_t, over u_t
        else:
            torch.addcmul(grad, slope_membrane, later, value=-leak, out=spike_grad)
            grad_threshold.sub_(spike_grad)
            grad = torch.addcmul(grad, carry, later, value=leak, out=membrane[t])  # U_t, over u_t
        grad.addcmul_(theta_v, grad_threshold)
        if grad_theta_v is None:
            grad_theta_v = grad_threshold * error
        else:
            grad_theta_v.addcmul_(grad_threshold, error)
        later = grad
    return membrane, grad_theta_v.sum(0)
