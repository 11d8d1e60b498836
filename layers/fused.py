"""The neuron loop of SPEC §4 as one Triton kernel per layer (forward) and one for the surrogate
backward, for CUDA tensors in float32/float16/bfloat16: the CUDA implementation of the
``'published'`` gradient rule for the LIF and TA-LIF neurons (their ``fused_forward`` in
``layers/dynamics.py``; ``layers.neuron.spike`` dispatches to it).

On a GPU the plain PyTorch loop launches about six element-wise kernels per time step and layer,
and small networks become launch-bound; here each neuron runs its whole time loop in registers.
The arithmetic is that of :func:`layers.neuron.neuron_forward` and
:func:`layers.neuron.trace_backward` in float32 (half types are widened). float64 and the CPU always
use the PyTorch loop, which is what the float64 golden tests check; the tests compare the two
paths. Without Triton (or with ``HOSNN_NO_TRITON=1`` in the environment) nothing here is used.
"""
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU-only PyTorch builds come without Triton
    triton = None

FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK = 1024


def available(tensor):
    """Whether the fused kernels can run on ``tensor`` (CUDA, or Triton's CPU interpreter when
    ``TRITON_INTERPRET=1``, as the tests use it)."""
    if triton is None or os.environ.get('HOSNN_NO_TRITON') == '1':
        return False
    on_device = tensor.is_cuda or os.environ.get('TRITON_INTERPRET') == '1'
    return on_device and tensor.dtype in FUSED_DTYPES


if triton is not None:
    @triton.jit
    def _forward_kernel(current_ptr, theta_v_ptr, nds_ptr, trace_ptr, f_ptr, error_ptr,
                        numel, neurons, leak, rate, threshold, neg_inv_width, clamp,
                        N_STEPS: tl.constexpr, ADAPTIVE: tl.constexpr, STORE_F: tl.constexpr,
                        BLOCK_SIZE: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offsets < numel
        neuron = offsets % neurons
        u = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
        y = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
        theta = tl.zeros([BLOCK_SIZE], dtype=tl.float32) + threshold
        error = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
        theta_v = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
        if ADAPTIVE:
            theta_v = tl.load(theta_v_ptr + neuron, mask=mask, other=0.0).to(tl.float32)
        for t in tl.static_range(N_STEPS):
            step = t * numel + offsets
            u = tl.load(current_ptr + step, mask=mask, other=0.0).to(tl.float32) + leak * u
            if ADAPTIVE:
                e = u - tl.load(nds_ptr + t * neurons + neuron, mask=mask, other=0.0).to(tl.float32)
                theta = theta + theta_v * e
                error = error + e
            spike = (u > theta).to(tl.float32)
            if STORE_F:
                z = tl.minimum(tl.maximum((u - threshold) * neg_inv_width, -clamp), clamp)
                f = 1.0 / (1.0 + tl.exp(-z))
                tl.store(f_ptr + step, f.to(f_ptr.dtype.element_ty), mask=mask)
            u = u - u * spike
            y = y + rate * (spike - y)
            tl.store(trace_ptr + step, y.to(trace_ptr.dtype.element_ty), mask=mask)
        if ADAPTIVE:
            tl.store(error_ptr + offsets, error.to(error_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _backward_kernel(grad_ptr, f_ptr, out_ptr, numel, rate, inv_width,
                         N_STEPS: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offsets < numel
        a = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
        for k in tl.static_range(N_STEPS):
            step = (N_STEPS - 1 - k) * numel + offsets
            g = tl.load(grad_ptr + step, mask=mask, other=0.0).to(tl.float32)
            a = a + rate * (g - a)  # A_t = G_t/tau_s + (1 - 1/tau_s) A_{t+1}
            f = tl.load(f_ptr + step, mask=mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + step, (a * (1.0 - f) * f * inv_width).to(out_ptr.dtype.element_ty),
                     mask=mask)


def neuron_forward(current, theta_v, nds, tau_m, tau_s, threshold, surrogate_width,
                   surrogate_clamp, store_f, adaptive):
    """``current[T, B, *shape]`` -> ``(trace, f or None, error_sum [B, *shape] or None)``, where
    ``f = sigmoid(clamp(-(u_t - V)/width, -clamp, clamp))`` of the pre-reset membrane.
    ``adaptive``: the TA-LIF step (``theta_v`` and ``nds`` given) or the LIF one (both None); one
    kernel serves both, the TA-LIF lines compiled in or out (``ADAPTIVE``, a compile-time flag)."""
    current = current.contiguous()
    n_steps = current.shape[0]
    numel = current[0].numel()
    neurons = theta_v.numel() if adaptive else 1
    trace = torch.empty_like(current)
    f = torch.empty_like(current) if store_f else trace  # (a dummy pointer when not stored)
    error_sum = torch.empty_like(current[0]) if adaptive else trace
    theta_v_flat = theta_v.detach().contiguous() if adaptive else trace
    nds_time_major = nds.movedim(-1, 0).contiguous() if adaptive else trace
    grid = (triton.cdiv(numel, BLOCK),)
    _forward_kernel[grid](current, theta_v_flat, nds_time_major, trace, f, error_sum, numel,
                          neurons, 1 - 1 / tau_m, 1 / tau_s, float(threshold),
                          -1 / surrogate_width, float(surrogate_clamp), N_STEPS=n_steps,
                          ADAPTIVE=adaptive, STORE_F=store_f, BLOCK_SIZE=BLOCK)
    return trace, (f if store_f else None), (error_sum if adaptive else None)


def surrogate_backward(grad_traces, f, tau_s, surrogate_width):
    """dL/dI of SPEC §4 from ``G = dL/dy`` and the saved ``f``."""
    grad_traces = grad_traces.contiguous()
    out = torch.empty_like(f)
    numel = f[0].numel()
    _backward_kernel[(triton.cdiv(numel, BLOCK),)](
        grad_traces, f, out, numel, 1 / tau_s, 1 / surrogate_width, N_STEPS=f.shape[0],
        BLOCK_SIZE=BLOCK)
    return out
