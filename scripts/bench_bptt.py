"""Speed of the exact-BPTT gradient path (layers/bptt.py) against the published surrogate path and
plain autograd through the step loop: one attack gradient (forward + gradient w.r.t. the input).

    .venv/bin/python scripts/bench_bptt.py [--config networks/FashionMNIST.yaml] [--batch 64]
                                   [--device cpu|cuda] [--dtype float32|float64]
                                   [--path bptt:sigmoid] [--repeats 10] [--warmup 2] [--threads N]

The network is built from the YAML's ``Network`` and ``Layers`` sections (random weights and NDS:
the speed does not depend on them), in eval mode; the input is a random batch
``[B, C, H, W, T]``. Per step: ``net(x)``, ``attack_loss``, ``torch.autograd.grad`` w.r.t. ``x``.
The three paths alternate (one step each, round robin) and medians are reported, so that load
from other processes hits them alike. A last line checks that the BPTT path's output is the
published one and its gradient the plain-autograd one.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import input_shape, load_config
from layers import Network, attack_loss
from layers.gradients import gradient_path_name, parse_gradient_path, use_gradient_path
from layers.reference import AutogradPath


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default='networks/FashionMNIST.yaml')
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'float64'])
    parser.add_argument('--path', default='bptt:sigmoid', help="bptt:<surrogate>[:<sharpness>]")
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = parse_gradient_path(args.path)
    if path is None:
        parser.error("--path must be a bptt:... path")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    cfg, _ = load_config(args.config)
    torch.manual_seed(0)
    shape = input_shape(cfg)
    net = Network(cfg['Network'], cfg['Layers'], shape).to(device, dtype).eval()
    n_steps = net.settings.n_steps
    x = torch.randn(args.batch, *shape, 1, device=device, dtype=dtype).expand(
        -1, -1, -1, -1, n_steps).contiguous()
    labels = torch.randint(net.settings.n_class, (args.batch,), device=device)
    reference = AutogradPath(path.surrogate, path.sharpness)
    spiking = [m for m in net.modules() if hasattr(m, 'gradient_path')]

    def step(kind):
        hook = {'published': None, 'bptt': path, 'autograd': reference}[kind]
        for layer in spiking:
            layer.gradient_path = hook
        try:
            inputs = x.clone().requires_grad_(True)
            out, _ = net(inputs)
            (grad,) = torch.autograd.grad(attack_loss(out, labels, net.settings), inputs)
            return out.detach(), grad
        finally:
            for layer in spiking:
                layer.gradient_path = None

    kinds = ['published', 'bptt', 'autograd']
    times = {kind: [] for kind in kinds}
    for i in range(args.warmup + args.repeats):
        for kind in kinds:
            synchronize(device)
            start = time.perf_counter()
            step(kind)
            synchronize(device)
            if i >= args.warmup:
                times[kind].append(time.perf_counter() - start)

    print(f"{args.config}: {net.settings.model}, batch {args.batch}, T={n_steps}, {device}, "
          f"{args.dtype}, {torch.get_num_threads()} threads; forward + input gradient, "
          f"median of {args.repeats} (and min)")
    labels_ = {'published': 'published surrogate (SPEC §4)',
               'bptt': f'BPTT path ({gradient_path_name(path)})',
               'autograd': 'plain autograd, step by step'}
    base = statistics.median(times['bptt'])
    for kind in kinds:
        median = statistics.median(times[kind])
        print(f"  {labels_[kind]:<34} {1000 * median:9.2f} ms   ({median / base:.2f}x BPTT; "
              f"min {1000 * min(times[kind]):.2f} ms)")

    out_pub, _ = step('published')
    with use_gradient_path(net, path):
        inputs = x.clone().requires_grad_(True)
        out_bptt, _ = net(inputs)
    _, grad_bptt = step('bptt')
    _, grad_ref = step('autograd')
    scale = grad_ref.abs().max().clamp_min(torch.finfo(dtype).tiny)
    print(f"  check: BPTT output == published output: {torch.equal(out_bptt, out_pub)}; "
          f"max |BPTT grad - autograd grad| / max |grad| = "
          f"{((grad_bptt - grad_ref).abs().max() / scale).item():.2e}")


if __name__ == '__main__':
    main()
