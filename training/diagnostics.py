"""Spike diagnostics: per-layer firing rates and the spread of predictions, measured during the
evaluation passes (never in the training step), and the warnings a dead network deserves.

A network whose output layer never spikes predicts class 0 for every image (the argmax of an
all-zero output) and scores chance in every row of a robustness table -- clean, attacked and
noisy alike -- which looks like a result. ``diagnose`` says so.

    with SpikeMonitor(model) as monitor:          # hooks on the spiking layers and the network
        accuracy, n = evaluate(model, loader, ctx, progress)
    stats = monitor.stats(ctx)                    # summed over all ranks (a collective)
    for warning in diagnose(stats, 'clean test'):
        log(f"warning: {warning}")

The spiking layers return the synaptic trace ``y_t = y_{t-1} + (s_t - y_{t-1})/tau_s`` (SPEC §4,
``y_{-1} = 0``), so the spikes are recovered from it exactly up to rounding:
``s_t = y_{t-1} + tau_s (y_t - y_{t-1})``. Nothing in the layers changes, so the golden numbers and
the training speed are untouched. Only forwards run without autograd (``torch.no_grad``) are
counted: those are the evaluated predictions; the forwards an attack makes to get its input
gradient are not.
"""
import torch

from runtime.distributed import all_reduce_sum
from layers import predict
from layers.network import OUTPUT_LAYER
from layers.spiking import SpikingLayer


def spikes_from_trace(trace, tau_s):
    """``trace[T, ...]`` (the layer output) -> the 0/1 spikes ``[T, ...]`` that produced it."""
    previous = torch.zeros_like(trace)
    previous[1:] = trace[:-1]
    return torch.round(previous + tau_s * (trace - previous))


class SpikeMonitor:
    """Counts, while it is entered, the spikes of every spiking layer of ``model`` (a layers.Network,
    not a DDP wrapper) and the predicted classes, over the forwards run without autograd.
    Layers without a neuron (the softmax read-out) have no rate: ``None``, "not applicable"."""

    def __init__(self, model):
        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, SpikingLayer)]
        self.n_class = model.settings.n_class
        self.loss = model.settings.loss
        self._handles = []
        self.reset()

    def reset(self):
        device = next(self.model.parameters()).device
        zero = lambda dtype: torch.zeros((), dtype=dtype, device=device)  # noqa: E731
        self.spikes = {layer.name: zero(torch.float64) for layer in self.layers}
        self.neuron_steps = {layer.name: 0 for layer in self.layers}
        self.classes = torch.zeros(self.n_class, dtype=torch.int64, device=device)

    def __enter__(self):
        for layer in self.layers:
            if layer.neuron is not None:
                self._handles.append(layer.register_forward_hook(self._count_spikes))
        self._handles.append(self.model.register_forward_hook(self._count_predictions))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return False

    def _count_spikes(self, layer, inputs, output):
        if torch.is_grad_enabled():
            return
        trace = output[0]
        self.spikes[layer.name] += spikes_from_trace(trace.double(), layer.tau_s).sum()
        self.neuron_steps[layer.name] += trace.numel()

    def _count_predictions(self, model, inputs, output):
        if torch.is_grad_enabled():
            return
        self.classes += torch.bincount(predict(output[0]), minlength=self.n_class)

    def stats(self, ctx):
        """``{'firing_rate': {layer: mean spikes per neuron per step, or None}, 'output_rate',
        'predictions': [count per class], 'n_samples'}`` over every rank. Every rank must call it."""
        names = [layer.name for layer in self.layers]
        # (no spiking layer at all: the ANN twin, layers/ann.py)
        spikes = [self.spikes[n].cpu() for n in names]
        local = torch.cat([torch.stack(spikes) if spikes else torch.zeros(0, dtype=torch.float64),
                           torch.tensor([float(self.neuron_steps[n]) for n in names],
                                        dtype=torch.float64),
                           self.classes.cpu().double()])
        total = all_reduce_sum(ctx, local)
        k = len(names)
        rates = {}
        for index, layer in enumerate(self.layers):
            steps = total[k + index].item()
            rates[layer.name] = (None if layer.neuron is None or steps == 0
                                 else total[index].item() / steps)
        predictions = [int(c) for c in total[2 * k:].tolist()]
        return {'firing_rate': rates, 'output_rate': rates.get(OUTPUT_LAYER),
                'predictions': predictions, 'n_samples': sum(predictions)}


def format_rate(rate):
    """A rate for tables: ``n/a`` for a layer without a neuron (the softmax read-out)."""
    return 'n/a' if rate is None else f"{rate:.4f}"


def diagnose(stats, where='evaluation'):
    """Warning strings (empty when all is well) for ``SpikeMonitor.stats`` output: a silent output
    layer (its predictions are all class 0: chance accuracy that is no result), silent hidden
    layers, or every prediction in one class. Softmax read-outs do not spike: for them only the
    constant predictions are checked."""
    n = stats['n_samples']
    if n == 0:
        return []
    warnings = []
    rates = stats['firing_rate']
    silent = [name for name, rate in rates.items() if rate == 0]
    predictions = stats['predictions']
    classes = [c for c, count in enumerate(predictions) if count]
    if stats['output_rate'] == 0:
        warnings.append(
            f"{where}: the output layer never spiked on {n} samples (silent layers: "
            f"{', '.join(silent)}), so every prediction is class {classes[0] if classes else 0} "
            f"and the accuracy is chance, not a result -- check the thresholds, weight_scale, "
            f"Network.lr and the NDS")
        return warnings
    if silent:
        warnings.append(f"{where}: layer(s) {', '.join(silent)} never spiked on {n} samples")
    if len(classes) == 1 and len(predictions) > 1 and n > 1:
        warnings.append(f"{where}: every prediction is class {classes[0]} ({n} samples): the "
                        f"network ignores its input")
    return warnings
