"""Gradient-masking checks for the four models of a protocol run: accuracy under PGD as the budget
grows (a model whose gradients are informative must go towards 0% as eps grows) and under many
more PGD steps than the published 7 (a masked model would resist more steps just as well).

    python scripts/attack_sanity.py runs/fashionmnist --samples 1000 --json results/fashionmnist/attack_sanity.json
"""
import argparse
import json
import os
import sys
from fractions import Fraction

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from attack import ATTACKS, Normalization, attack_bounds, iterative_attack  # noqa: E402
from runtime.checkpoint import load_checkpoint, load_weights  # noqa: E402
from config import input_shape  # noqa: E402
from datasets import build_datasets  # noqa: E402
from layers import time_expand  # noqa: E402
from layers import Network, predict  # noqa: E402
from training.protocol_table import MODELS  # noqa: E402

BUDGETS = ('8/255', '16/255', '32/255', '64/255')  # PGD-7 as published at growing eps
LONG_PGD = (50, '8/255')  # 50 steps of eps/20 at 8/255


def load_stage(run_dir, name):
    path = os.path.join(run_dir, name, 'best.pth')
    checkpoint = load_checkpoint(path)
    cfg = checkpoint['config']
    model = Network(cfg['Network'], cfg['Layers'], input_shape(cfg))
    load_weights(model, checkpoint, path)
    return model.eval(), cfg


def accuracy(model, cfg, loader, eps, steps, step_size):
    network = cfg['Network']
    correct = seen = 0
    for images, labels in loader:
        x = time_expand(images, network['n_steps'])
        if eps > 0:
            units = Normalization.of(network)
            x = iterative_attack(model, x, labels, units.to_model_units(eps), attack_bounds(cfg),
                                 steps, units.to_model_units(step_size))
        with torch.no_grad():
            out, _ = model(x, False)
        correct += (predict(out) == labels).sum().item()
        seen += labels.shape[0]
    return correct / seen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('run_dir')
    parser.add_argument('--samples', type=int, default=1000, help='the first N test images')
    parser.add_argument('--json')
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for name in MODELS:
        model, cfg = load_stage(args.run_dir, name)
        _, test_set = build_datasets(cfg['Network']['dataset'], cfg['Network']['data_path'],
                                     test_samples=args.samples)
        loader = torch.utils.data.DataLoader(test_set, batch_size=cfg['Network']['batch_size'])
        row = {'model': name, 'n_samples': len(test_set), 'clean': accuracy(model, cfg, loader, 0, 0, 0)}
        for text in BUDGETS:
            eps = float(Fraction(text))
            pgd = ATTACKS['pgd'].params
            row[f'pgd7 {text}'] = accuracy(model, cfg, loader, eps, pgd['steps'],
                                           eps / pgd['step_divisor'])
        steps, text = LONG_PGD
        eps = float(Fraction(text))
        row[f'pgd{steps} {text}'] = accuracy(model, cfg, loader, eps, steps, eps / 20)
        rows.append(row)
        print(' | '.join(f"{k} {100 * v:.1f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in row.items()), flush=True)
    columns = [k for k in rows[0] if k not in ('model', 'n_samples')]
    print('\n| model | ' + ' | '.join(columns) + ' |')
    print('|---|' + '---:|' * len(columns))
    for row in rows:
        print(f"| {row['model']} | " + ' | '.join(f"{100 * row[c]:.1f}" for c in columns) + ' |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
            f.write('\n')


if __name__ == '__main__':
    main()
