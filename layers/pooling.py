import torch
import torch.nn as nn
import torch.nn.functional as F

from .config_keys import MAX_SCALE, ConfigError, check_elements, get_number, get_pair

DEFAULT_THETA = 1.1


def _window_slices(x, kernel, out_size):
    """``x[..., i::kh, j::kw]`` cut to ``out_size``, for every window offset ``(i, j)``: with a
    stride equal to the kernel and no padding, window position ``(i, j)`` of every output pixel."""
    (kh, kw), (ho, wo) = kernel, out_size
    return [((i, j), x[..., i:i + ho * kh:kh, j:j + wo * kw:kw])
            for i in range(kh) for j in range(kw)]


class WindowSum(torch.autograd.Function):
    """Sum pooling with non-overlapping windows (stride == kernel, no padding) and a fixed weight
    ``[kh, kw]``: ``out = sum_ij weight[i, j] * x[..., i::kh, j::kw]``. The same sums as the
    1-channel convolution, but as ``kh*kw`` strided element-wise kernels, forward and backward (a
    1-channel convolution over ``T*B*C`` planes is very slow on the CPU). Gradient to ``x`` only;
    any weight values work (no assumption that they are all equal)."""

    @staticmethod
    def forward(ctx, x, weight):
        kh, kw = weight.shape
        out_size = (x.shape[-2] // kh, x.shape[-1] // kw)
        out = None
        for (i, j), window in _window_slices(x, (kh, kw), out_size):
            if out is None:
                out = torch.mul(window, weight[i, j])
            else:
                out.addcmul_(window, weight[i, j])
        ctx.save_for_backward(weight)
        ctx.in_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        kh, kw = weight.shape
        in_shape, out_size = ctx.in_shape, grad_out.shape[-2:]
        covered = out_size[0] * kh == in_shape[-2] and out_size[1] * kw == in_shape[-1]
        grad_in = grad_out.new_empty(in_shape) if covered else grad_out.new_zeros(in_shape)
        for (i, j), window in _window_slices(grad_in, (kh, kw), out_size):
            torch.mul(grad_out, weight[i, j], out=window)
        return grad_in, None


def pooling_output_shape(cfg, in_shape, where):
    kernel = get_pair(cfg, 'kernel_size', where, minimum=1)
    stride = get_pair(cfg, 'stride', where, default=kernel, minimum=1)
    padding = get_pair(cfg, 'padding', where, default=0)
    get_number(cfg, 'theta', where, default=DEFAULT_THETA, positive=True, maximum=MAX_SCALE)
    size = [(n + 2 * p - k) // s + 1 for n, k, p, s in zip(in_shape[1:], kernel, padding, stride)]
    if min(size) < 1:
        raise ConfigError(f"{where}: kernel_size {list(kernel)} does not fit the input "
                          f"{list(in_shape[1:])}")
    check_elements(where, f"the output {[in_shape[0], *size]} of one sample and time step",
                   in_shape[0] * size[0] * size[1])
    return (in_shape[0], *size)


def pooling_geometry(cfg, in_shape, where):
    """``(out_shape, kernel, stride, padding)`` of a pooling layer's keys (stride defaults to the
    kernel, padding to 0); shared by the spiking layer and the ANN twin's."""
    kernel = get_pair(cfg, 'kernel_size', where)
    return (pooling_output_shape(cfg, in_shape, where), kernel,
            get_pair(cfg, 'stride', where, default=kernel), get_pair(cfg, 'padding', where, default=0))


class PoolingLayer(nn.Module):
    """Fixed sum pooling per channel and time step; every weight equals ``theta``. The weight is a
    buffer (saved as ``weight``, shape ``[1, 1, kh, kw, 1]``, never trained). The YAML's
    ``threshold`` key on pooling layers is ignored, as in the published code."""

    def __init__(self, name, cfg, in_shape):
        super().__init__()
        where = f"Layers.{name}"
        self.name = name
        self.out_shape, self.kernel, self.stride, self.padding = pooling_geometry(cfg, in_shape, where)
        theta = get_number(cfg, 'theta', where, default=DEFAULT_THETA)
        self.register_buffer('weight', torch.full((1, 1, *self.kernel, 1), float(theta)))

    def forward(self, x, is_train=False, record_nds=False):
        n_steps, batch = x.shape[:2]
        weight = self.weight[0, 0, :, :, 0]
        if self.stride == self.kernel and self.padding == (0, 0):
            h = WindowSum.apply(x.flatten(0, 1), weight)
        else:  # overlapping windows or padding: the per-channel 1-channel convolution
            h = F.conv2d(x.reshape(-1, 1, *x.shape[3:]), weight[None, None], None, self.stride,
                         self.padding)
        return h.reshape(n_steps, batch, *self.out_shape), None

    def extra_repr(self):
        return f"name={self.name!r}, kernel={list(self.kernel)}, stride={list(self.stride)}, " \
               f"theta={self.weight.flatten()[0].item():g}"
