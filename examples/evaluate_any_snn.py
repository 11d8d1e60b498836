"""Evaluate a spiking network that is NOT built from this project's layers with
``robustness.evaluate``: a tiny LIF network in plain PyTorch (a Heaviside spike with a sigmoid
surrogate gradient through a custom autograd Function, T time steps, Fashion-MNIST-size input),
trained for a few hundred steps, then attacked by the quick suite -- through plain autograd and
through two other surrogate sharpnesses supplied as gradient paths.

    python examples/evaluate_any_snn.py                      # real Fashion-MNIST: 2.5 CPU-minutes
    python examples/evaluate_any_snn.py --random-data --samples 8 --train-steps 0 --budget smoke  # the test
"""
import argparse
import contextlib
import gzip
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import robustness  # noqa: E402

FASHION_MNIST = '/usr/share/datasets/fashion-mnist'


class Spike(torch.autograd.Function):
    """Heaviside spike; backward: the derivative of sigmoid(alpha * v) (alpha: the sharpness)."""
    alpha = 4.0

    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        s = torch.sigmoid(Spike.alpha * v)
        return grad * Spike.alpha * s * (1 - s)


class TinyLIF(nn.Module):
    """784 -> 128 LIF -> 10, T steps of the same input current (direct encoding); the scores
    are the output layer's summed potential, ``[B, 10]``."""

    def __init__(self, n_steps=8, beta=0.9):
        super().__init__()
        self.n_steps, self.beta = n_steps, beta
        self.fc1, self.fc2 = nn.Linear(784, 128), nn.Linear(128, 10)

    def forward(self, images):  # [B, 1, 28, 28], pixels in [0, 1]
        current = self.fc1(images.flatten(1))
        v, scores = torch.zeros_like(current), 0
        for _ in range(self.n_steps):
            v = self.beta * v + current
            spikes = Spike.apply(v - 1.0)
            v = v - spikes  # soft reset
            scores = scores + self.fc2(spikes)
        return scores


@contextlib.contextmanager
def surrogate_sharpness(alpha):
    """A gradient path: within the block the spike's backward uses sharpness ``alpha``."""
    old, Spike.alpha = Spike.alpha, alpha
    try:
        yield
    finally:
        Spike.alpha = old


def fashion_mnist(split, n):
    """The first ``n`` images ([n, 1, 28, 28] in [0, 1]) and labels of Debian's Fashion-MNIST."""
    prefix = {'train': 'train', 'test': 't10k'}[split]
    with gzip.open(os.path.join(FASHION_MNIST, f'{prefix}-images-idx3-ubyte.gz')) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    with gzip.open(os.path.join(FASHION_MNIST, f'{prefix}-labels-idx1-ubyte.gz')) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    return torch.tensor(images / 255.0, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64)


def data(split, n, random_data):
    if random_data:
        generator = torch.Generator().manual_seed(0 if split == 'train' else 1)
        return torch.rand(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)
    return fashion_mnist(split, n)


def train(model, images, labels, steps, batch=64):
    if steps == 0:
        return
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        index = torch.randint(0, len(images), (batch,))
        loss = F.cross_entropy(model(images[index]), labels[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--samples', type=int, default=200, help='test images to attack')
    parser.add_argument('--train-steps', type=int, default=600, help='Adam steps of batch 64')
    parser.add_argument('--suite', default='quick', choices=('published', 'quick', 'full'))
    parser.add_argument('--eps', default='8/255')
    parser.add_argument('--random-data', action='store_true', help='random images (no data set needed)')
    parser.add_argument('--budget', default='full', choices=('full', 'smoke'),
                        help='smoke: a tenth of the attack steps (the pipeline runs; not a result)')
    parser.add_argument('--no-sanity-eps', action='store_true', help='skip the 64/255 masking check')
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = TinyLIF()
    train(model, *data('train', 5000, args.random_data), args.train_steps)
    images, labels = data('test', args.samples, args.random_data)
    if args.random_data:  # no true labels: attack the model's own predictions (all clean-correct)
        with torch.no_grad():
            labels = model(images).argmax(1)

    # --- the README example ---------------------------------------------------------------
    result = robustness.evaluate(
        model, images, labels, eps=args.eps, suite=args.suite,       # images in [0, 1]
        gradient_paths={'sigmoid:1': lambda: surrogate_sharpness(1.0),  # + plain autograd
                        'sigmoid:16': lambda: surrogate_sharpness(16.0)},
        budget=args.budget, sanity_eps=not args.no_sanity_eps, log=print)
    for row in result['rows']:
        print(f"{row['attack']:<18} {row['gradient']:<28} {100 * row['accuracy']:6.2f}%")
    for worst in result['worst_case']:
        print(f"worst case at eps={worst['eps']}: {100 * worst['accuracy']:.2f}%")
    for check in result['sanity']:
        print(f"[{ {True: 'PASS', False: 'FAIL', None: 'n/a'}[check['passed']] }] {check['check']}")
    return result


if __name__ == '__main__':
    main()
