"""Speed and memory of the spiking networks against the equivalent ANN work, in one process.

    .venv/bin/python scripts/bench.py [--nets mnist,cifar10] [--models LIF,ALIF] [--batch 64,16]
                              [--device cpu|cuda] [--dtype float32] [--repeats N] [--warmup N]
                              [--steps train,attack] [--threads N] [--no-memory] [--json PATH]
                              [--train-gradient bptt:fast-sigmoid:5 | none]

For every network (MNIST, CIFAR10) and neuron model (LIF, ALIF = TA-LIF) it measures

* **train step**: ``engine.train_step``, the step of the training loop (SPEC §7: ``net(x, True)`` +
  ``compute_loss`` + ``backward`` + ``clip_grad_norm_(params, 1)`` + AdamW step +
  ``net.weight_clipper()``), without data loading;
* **attack step**: one PGD/FGSM step, ``attack.input_gradient``: the model in eval mode,
  ``net(x, False)``, ``attack_loss``, gradient w.r.t. the input only;

and, for the train step, the same step trained through the exact BPTT gradient
(``Network.train_gradient``, default ``bptt:fast-sigmoid:5``; same network, same weights, its own
optimiser): the ``BPTT/published`` column is its time over the published train step's.

Both SNN steps are compared with the same two steps for the *ANN equivalent*: the same convolutions (2-D, on a batch of B*T
images), BatchNorm where the SNN has it, ReLU instead of the neuron, the same sum pooling
(``avg_pool2d * k*k``), dropout, the same linears, a plain loss (sum of squared errors for
training, cross-entropy for the attack), the same optimiser step and weight clamp. The SNN sees
``[B, C, H, W, T]``, the ANN ``[B*T, C, H, W]``: the same number of images through the same layers.

SNN and ANN measurements alternate (one SNN step, one ANN step, ...) and the table reports
medians, so that load from other processes hits both alike. Columns: milliseconds per step,
images per second (B / step time; one "image" is one sample of B, i.e. T time steps for the SNN
and T ANN images), the SNN/ANN time ratio, and peak memory.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated()`` during one step minus what was
allocated before it. On the CPU, where PyTorch keeps no allocator statistics, one extra step runs
under ``torch.profiler`` with ``profile_memory=True``; the allocation/free events it records are
replayed in order and the peak of the running sum is reported. Both therefore measure the same
thing: the peak of the tensor bytes allocated *during* the step (activations saved for backward,
gradients, temporaries), not the parameters, optimiser state or input that exist before it.

The networks come from ``networks/MNIST.yaml`` and ``networks/CIFAR10.yaml``, read through the
config loader (``config.load_config``) with ``Network.model`` set to each of ``--models`` and
``Network.ckpt_v`` to null (a random NDS is as fast).

CPU caveats. Timings on a shared machine are noisy (other processes stall the OpenMP threads):
compare ratios, re-run, or use ``--threads 1``. Like the commands (``main.py``, ``evaluate.py``,
``protocol.py``), the bench keeps freed memory in the process (``runtime/allocator.py``):
glibc would return large freed blocks to the system and page-fault them back in on the next
step, which costs the SNN (more, larger temporaries) more than the ANN.
"""
import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault('KINETO_LOG_LEVEL', '5')  # before torch: a quiet profiler

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from attack import input_gradient  # noqa: E402
from runtime.allocator import keep_freed_memory  # noqa: E402
from runtime.checkpoint import atomic_write_text  # noqa: E402
from config import input_shape, load_config  # noqa: E402
from training.engine import build_optimizer, train_step  # noqa: E402
from layers import Network, gradient_path_name, parse_gradient_path  # noqa: E402
from layers.network import output_batch_norm  # noqa: E402
from layers.neuron_registry import NEURONS, neuron_by_title  # noqa: E402

# --- The networks --------------------------------------------------------------------------------

NETS = {
    # name: (networks/ file, default CPU batch)
    'mnist': ('MNIST.yaml', 64),
    'cifar10': ('CIFAR10.yaml', 16),
}


def load_net_config(name, model):
    """``(resolved config, source)`` of ``networks/<NAME>.yaml`` with ``model`` as the neuron and
    no NDS file."""
    path = os.path.join(ROOT, 'networks', NETS[name][0])
    cfg, _ = load_config(path, [f'Network.model={model}', 'Network.ckpt_v=null',
                                'Network.save_target=false'])
    return cfg, os.path.relpath(path, ROOT)


# --- The ANN equivalent -----------------------------------------------------------------------

def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


class SumPool(nn.Module):
    def __init__(self, kernel, stride, padding):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding) * math.prod(self.kernel)


def ann_equivalent(settings, layers_cfg):
    """The same layers as a plain ANN on ``[B*T, C, H, W]`` (see the module docstring)."""
    is_bn = settings.is_bn
    modules = []
    flat = False
    for name, cfg in layers_cfg.items():
        kind = cfg['type']
        if kind == 'conv':
            modules.append(nn.Conv2d(cfg['in_channels'], cfg['out_channels'], cfg['kernel_size'],
                                     cfg.get('stride', 1), cfg.get('padding', 0),
                                     cfg.get('dilation', 1), bias=False))
            if is_bn:
                modules.append(nn.BatchNorm2d(cfg['out_channels']))
            modules.append(nn.ReLU())
        elif kind == 'pooling':
            kernel = _pair(cfg['kernel_size'])
            modules.append(SumPool(kernel, _pair(cfg.get('stride', kernel)),
                                   _pair(cfg.get('padding', 0))))
        elif kind == 'dropout':
            modules.append(nn.Dropout(cfg.get('p', 0.5)))
        else:
            if not flat:
                modules.append(nn.Flatten())
                flat = True
            modules.append(nn.Linear(cfg['n_inputs'], cfg['n_outputs'], bias=False))
            if output_batch_norm(settings) if name == 'output' else is_bn:
                modules.append(nn.BatchNorm1d(cfg['n_outputs']))
            if name != 'output':
                modules.append(nn.ReLU())
    return nn.Sequential(*modules)


# --- The steps ---------------------------------------------------------------------------------

class Case:
    """One network/model pair: the SNN, its ANN equivalent, inputs, optimisers and step closures."""

    def __init__(self, net_name, model, batch, device, dtype, train_gradient=None):
        cfg, self.source = load_net_config(net_name, model)
        shape = input_shape(cfg)
        self.name, self.model, self.batch = net_name, model, batch
        self.device, self.dtype = device, dtype
        lr = cfg['Network']['lr']

        gen = torch.Generator().manual_seed(0)
        self.snn = Network(cfg['Network'], cfg['Layers'], shape).to(device, dtype)
        n_steps, n_class = self.snn.settings.n_steps, self.snn.settings.n_class
        image = torch.randn(batch, *shape, 1, generator=gen)
        self.x_snn = image.expand(*image.shape[:-1], n_steps).contiguous().to(device, dtype)
        self.labels = torch.randint(0, n_class, (batch,), generator=gen).to(device)
        self.opt_snn = build_optimizer(self.snn, lr)
        # The same network (a copy: the weights drift apart as each trains) with the training
        # gradient set as Network.train_gradient sets it.
        self.snn_bptt = self.opt_bptt = None
        if train_gradient is not None:
            self.snn_bptt = copy.deepcopy(self.snn)
            self.snn_bptt.settings = dataclasses.replace(self.snn.settings,
                                                         train_gradient=train_gradient)
            self.opt_bptt = build_optimizer(self.snn_bptt, lr)

        self.ann = ann_equivalent(self.snn.settings, cfg['Layers']).to(device, dtype)
        self.x_ann = image[..., 0].repeat_interleave(n_steps, 0).to(device, dtype)
        self.labels_ann = self.labels.repeat_interleave(n_steps).to(device)
        self.target_ann = F.one_hot(self.labels_ann, n_class).to(device, dtype)
        self.opt_ann = build_optimizer(self.ann, lr)
        self.ann_weights = [m.weight for m in self.ann.modules()
                            if isinstance(m, (nn.Conv2d, nn.Linear))]

    # training steps
    def snn_train(self):
        self.snn.train()
        train_step(self.snn, self.x_snn, self.labels, self.opt_snn)

    def snn_train_bptt(self):
        self.snn_bptt.train()
        train_step(self.snn_bptt, self.x_snn, self.labels, self.opt_bptt)

    def ann_train(self):
        net = self.ann
        net.train()
        self.opt_ann.zero_grad(set_to_none=True)
        out = net(self.x_ann)
        loss = 0.5 * torch.sum((out - self.target_ann) ** 2)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1)
        self.opt_ann.step()
        with torch.no_grad():
            for w in self.ann_weights:
                w.clamp_(-4, 4)

    # attack steps
    def snn_attack(self):
        self.snn.eval()
        return input_gradient(self.snn, self.x_snn, self.labels)

    def ann_attack(self):
        self.ann.eval()
        x = self.x_ann.detach().requires_grad_(True)
        loss = F.cross_entropy(self.ann(x), self.labels_ann)
        (grad,) = torch.autograd.grad(loss, x)
        return grad


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def peak_memory(fn, device):
    """Peak bytes of tensors allocated during ``fn()`` (see the module docstring)."""
    if device.type == 'cuda':
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    try:  # every allocation (+) and free (-) with its time stamp, also those inside an op
        from torch._C._profiler import _EventType

        def walk(node):
            if node.tag == _EventType.Allocation and node.extra_fields.device.type == 'cpu':
                events.append((node.start_time_ns, node.extra_fields.alloc_size))
            for child in node.children:
                walk(child)

        for root in prof.profiler.kineto_results.experimental_event_tree():
            walk(root)
    except (ImportError, AttributeError):  # public API only: net bytes per op, in op order
        events = [(e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                  if e.self_cpu_memory_usage]
    events.sort(key=lambda item: item[0])
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """The CPU profiler's C++ side logs start/stop lines on fd 2; keep the report readable."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def measure(case, repeats, warmup, device, memory=True, steps=('train', 'attack')):
    """Interleaved timing: each repeat runs one SNN and one ANN step of each kind (and one BPTT
    train step with the train step, when the case has one)."""
    pairs = {'train': (case.snn_train, case.ann_train),
             'attack': (case.snn_attack, case.ann_attack)}
    pairs = {kind: pairs[kind] for kind in steps}
    result = {}
    for kind, (snn_fn, ann_fn) in pairs.items():
        bptt_fn = case.snn_train_bptt if kind == 'train' and case.snn_bptt is not None else None
        for _ in range(warmup):
            snn_fn()
            ann_fn()
            if bptt_fn is not None:
                bptt_fn()
        snn_times, ann_times, bptt_times = [], [], []
        for i in range(repeats):
            # alternate which goes first, so that neither always follows the other
            if i % 2:
                ann_times.append(timed(ann_fn, device))
                snn_times.append(timed(snn_fn, device))
            else:
                snn_times.append(timed(snn_fn, device))
                ann_times.append(timed(ann_fn, device))
            if bptt_fn is not None:
                bptt_times.append(timed(bptt_fn, device))
        snn_ms = 1e3 * statistics.median(snn_times)
        ann_ms = 1e3 * statistics.median(ann_times)
        entry = {'snn_ms': snn_ms, 'ann_ms': ann_ms, 'ratio': snn_ms / ann_ms,
                 'snn_img_s': case.batch / snn_ms * 1e3, 'ann_img_s': case.batch / ann_ms * 1e3,
                 'snn_ms_all': [1e3 * t for t in snn_times],
                 'ann_ms_all': [1e3 * t for t in ann_times]}
        if bptt_times:
            bptt_ms = 1e3 * statistics.median(bptt_times)
            entry.update(bptt_gradient=gradient_path_name(case.snn_bptt.settings.train_gradient),
                         bptt_ms=bptt_ms, bptt_ratio=bptt_ms / snn_ms,
                         bptt_ms_all=[1e3 * t for t in bptt_times])
        if memory:
            entry['snn_peak_bytes'] = peak_memory(snn_fn, device)
            entry['ann_peak_bytes'] = peak_memory(ann_fn, device)
        result[kind] = entry
    return result


def _mib(n):
    return n / 2 ** 20


def markdown(rows, device, dtype, threads):
    sources = sorted({f"{row['net']}: {row['source']}" for row in rows})
    lines = [f"device {device}, {dtype}, torch {torch.__version__}, "
             f"{threads} CPU threads; median of interleaved repeats; networks {', '.join(sources)}",
             "",
             "| net | model | batch | step | SNN ms | ANN ms | ratio | SNN img/s | ANN img/s "
             "| SNN peak MiB (per img) | ANN peak MiB (per img) | BPTT train ms "
             "| BPTT/published |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        for kind in ('train', 'attack'):
            if kind not in row:
                continue
            e = row[kind]
            mem = ''
            if 'snn_peak_bytes' in e:
                s, a = _mib(e['snn_peak_bytes']), _mib(e['ann_peak_bytes'])
                mem = (f"{s:.1f} ({s / row['batch']:.2f}) | {a:.1f} ({a / row['batch']:.2f})")
            else:
                mem = '- | -'
            bptt = (f"{e['bptt_ms']:.1f} | **{e['bptt_ratio']:.2f}**" if 'bptt_ms' in e
                    else '- | -')
            model = NEURONS[row['model']].title
            lines.append(f"| {row['net']} | {model} | {row['batch']} | {kind} | {e['snn_ms']:.1f} "
                         f"| {e['ann_ms']:.1f} | {e['ratio']:.2f} | {e['snn_img_s']:.0f} "
                         f"| {e['ann_img_s']:.0f} | {mem} | {bptt} |")
    gradients = sorted({row['train']['bptt_gradient'] for row in rows
                        if 'bptt_gradient' in row.get('train', {})})
    if gradients:
        lines += ['', f"BPTT train: Network.train_gradient={', '.join(gradients)}; "
                      "BPTT/published = its train step over the published one (same network)"]
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--nets', default='mnist,cifar10')
    parser.add_argument('--models', default='LIF,ALIF', help='LIF, ALIF (TA-LIF) or both')
    parser.add_argument('--batch', default=None,
                        help='one batch size for all nets, or one per net (comma-separated); '
                             'default: mnist 64, cifar10 16')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='float32')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    parser.add_argument('--steps', default='train,attack', help='train, attack or both')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory step')
    parser.add_argument('--json', default=None,
                        help='also write the results as JSON to this file (nothing is written '
                             'without it)')
    parser.add_argument('--train-gradient', default='bptt:fast-sigmoid:5',
                        help="the BPTT training gradient timed beside the published train step "
                             "(Network.train_gradient), or 'none'")
    args = parser.parse_args(argv)
    train_gradient = None
    if args.train_gradient != 'none':
        try:
            train_gradient = parse_gradient_path(args.train_gradient)
        except ValueError as exc:
            parser.error(f"--train-gradient: {exc}")

    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the commands do (runtime/distributed.init_distributed)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    steps = [s.strip() for s in args.steps.split(',') if s.strip()]
    nets = [n.strip().lower() for n in args.nets.split(',') if n.strip()]
    models = [neuron_by_title(m.strip()).name for m in args.models.split(',') if m.strip()]
    if args.batch is None:
        batches = [NETS[n][1] for n in nets]
    else:
        batches = [int(b) for b in args.batch.split(',')]
        batches = batches * len(nets) if len(batches) == 1 else batches
    rows = []
    for net_name, batch in zip(nets, batches):
        for model in models:
            torch.manual_seed(0)
            case = Case(net_name, model, batch, device, dtype, train_gradient)
            res = measure(case, args.repeats, args.warmup, device, memory=not args.no_memory,
                          steps=steps)
            row = {'net': net_name, 'model': model, 'batch': batch, 'source': case.source, **res}
            rows.append(row)
            for kind in res:
                e = res[kind]
                bptt = (f"  BPTT {e['bptt_ms']:8.1f} ms  BPTT/published {e['bptt_ratio']:.2f}"
                        if 'bptt_ms' in e else '')
                print(f"{net_name:8s} {model:5s} B={batch:<4d} {kind:6s} SNN {e['snn_ms']:8.1f} ms"
                      f"  ANN {e['ann_ms']:8.1f} ms  ratio {e['ratio']:.2f}{bptt}", flush=True)
            del case
    print()
    print(markdown(rows, device, args.dtype, torch.get_num_threads()))
    if args.json:  # the only file bench.py writes
        atomic_write_text(args.json, json.dumps(
            {'device': str(device), 'dtype': args.dtype, 'torch': torch.__version__,
             'threads': torch.get_num_threads(), 'rows': rows}, indent=1) + '\n')
    return rows


if __name__ == '__main__':
    main()
