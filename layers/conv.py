import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config_keys import MAX_SCALE, ConfigError, check_elements, get_number, get_pair
from .spiking import SpikingLayer

# Below this many input channels, a CPU convolution's input gradient is computed by
# :class:`FewChannelConv2d` rather than by oneDNN, whose kernels are blocked by 8/16 channels: on
# Fashion-MNIST's first layer (1 -> 15 channels, 5x5, 320 planes of 28x28) oneDNN took 21 ms of an
# 84 ms attack step on one thread (in place), the matrix product and shifted adds below 8-10 ms.
# With 15 input channels oneDNN is twice as fast as they are.
FEW_INPUT_CHANNELS = 4


def conv_input_grad(grad_out, weight, input_shape, stride, padding, dilation):
    """dL/dx of ``F.conv2d(x, weight, None, stride, padding, dilation)`` from ``grad_out``
    ``[N, C', H', W']``: ``cols = W^T grad_out`` (one matrix product over the kernel's taps), then
    each tap's plane added into the (padded) input at its offset (col2im as ``kh*kw`` strided adds;
    ``F.fold`` is slower on the CPU)."""
    n, c_out, h_out, w_out = grad_out.shape
    _, c_in, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    cols = torch.matmul(weight.reshape(c_out, c_in * kh * kw).t(),
                        grad_out.reshape(n, c_out, h_out * w_out))
    cols = cols.view(n, c_in, kh, kw, h_out, w_out)
    height, width = input_shape[-2:]
    grad_in = grad_out.new_zeros(n, c_in, height + 2 * ph, width + 2 * pw)
    for i in range(kh):
        for j in range(kw):
            grad_in[:, :, i * dh:i * dh + sh * (h_out - 1) + 1:sh,
                    j * dw:j * dw + sw * (w_out - 1) + 1:sw] += cols[:, :, i, j]
    return grad_in[:, :, ph:ph + height, pw:pw + width]


class FewChannelConv2d(torch.autograd.Function):
    """``F.conv2d`` (no bias, no groups) whose input gradient is :func:`conv_input_grad`; the
    weight gradient is ATen's. Same forward; the gradient agrees to rounding (tests)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.geometry = stride, padding, dilation
        return F.conv2d(x, weight, None, stride, padding, dilation)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = conv_input_grad(grad_out, weight, x.shape, stride, padding, dilation)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, stride, padding, dilation, False, (0, 0), 1,
                (False, True, False))[1]
        return grad_x, grad_weight, None, None, None


def conv2d(x, weight, stride, padding, dilation):
    """``F.conv2d`` without bias; on the CPU with few input channels and an input gradient to
    compute, through :class:`FewChannelConv2d`."""
    if x.device.type == 'cpu' and x.requires_grad and torch.is_grad_enabled() and \
            x.shape[1] < FEW_INPUT_CHANNELS:
        return FewChannelConv2d.apply(x, weight, tuple(stride), tuple(padding), tuple(dilation))
    return F.conv2d(x, weight, None, stride, padding, dilation)


def conv_output_shape(cfg, in_shape, where):
    """Validate a conv layer's keys against its input ``[C, H, W]``; return ``[C', H', W']``."""
    in_channels = get_number(cfg, 'in_channels', where, positive=True, integer=True)
    out_channels = get_number(cfg, 'out_channels', where, positive=True, integer=True)
    kernel = get_pair(cfg, 'kernel_size', where, minimum=1)
    padding = get_pair(cfg, 'padding', where, default=0)
    stride = get_pair(cfg, 'stride', where, default=1, minimum=1)
    dilation = get_pair(cfg, 'dilation', where, default=1, minimum=1)
    get_number(cfg, 'threshold', where, positive=True)
    get_number(cfg, 'weight_scale', where, default=1, positive=True, maximum=MAX_SCALE)
    if in_channels != in_shape[0]:
        raise ConfigError(f"{where}.in_channels is {in_channels} but the previous layer produces "
                          f"{in_shape[0]} channels (shape {list(in_shape)})")
    size = [(n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, p, s, d in zip(in_shape[1:], kernel, padding, stride, dilation)]
    if min(size) < 1:
        raise ConfigError(f"{where}: kernel_size {list(kernel)} does not fit the input "
                          f"{list(in_shape[1:])}")
    check_elements(where, f"the weight [{out_channels}, {in_channels}, {kernel[0]}, {kernel[1]}]",
                   out_channels * in_channels * kernel[0] * kernel[1])
    check_elements(where, f"the output {[out_channels, *size]} of one sample and time step",
                   out_channels * size[0] * size[1])
    return (out_channels, *size)


class ConvLayer(SpikingLayer):
    """A 2-D convolution applied at every time step (weight ``[out, in, kh, kw, 1]``, the published
    Conv3d layout), optional BatchNorm, then the spiking neuron. Time is folded into the batch."""

    def __init__(self, name, cfg, in_shape, settings, neuron):
        where = f"Layers.{name}"
        out_shape = conv_output_shape(cfg, in_shape, where)
        check_elements(where, "the output (and NDS) over all time steps",
                       math.prod(out_shape) * settings.n_steps)
        super().__init__(name, out_shape, cfg['threshold'], settings, neuron)
        self.stride = get_pair(cfg, 'stride', where, default=1)
        self.padding = get_pair(cfg, 'padding', where, default=0)
        self.dilation = get_pair(cfg, 'dilation', where, default=1)
        kh, kw = get_pair(cfg, 'kernel_size', where)
        weight = torch.empty(out_shape[0], in_shape[0], kh, kw, 1)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Conv3d's default initialisation
        self.weight = nn.Parameter(weight * get_number(cfg, 'weight_scale', where, default=1))
        self.init_neuron(settings, random_nds=True)
        self.bn = nn.BatchNorm2d(out_shape[0]) if settings.is_bn else None

    def forward(self, x, is_train=False, record_nds=False):
        n_steps, batch = x.shape[:2]
        h = conv2d(x.flatten(0, 1), self.weight.squeeze(-1), self.stride, self.padding,
                   self.dilation)
        if self.bn is not None:
            # BatchNorm3d over [B, C, H, W, T] == BatchNorm2d over [T*B, C, H, W].
            h = self.bn(h)
        return self.fire(h.view(n_steps, batch, *self.neuron_shape), record_nds)
