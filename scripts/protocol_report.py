"""Collect a protocol run (protocol.py --out RUN) into a results folder: every stage's
results.json in one file, the tables as Markdown, the robustness and learning-curve plots.

    python scripts/protocol_report.py runs/fashionmnist results/fashionmnist

Needs matplotlib for the plots (optional: without it only the JSON and the tables are written).
"""
import argparse
import json
import os
import sys
from fractions import Fraction

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from attack import training_attack  # noqa: E402
from training.protocol_table import MODELS, TITLES, format_markdown_table  # noqa: E402

ATTACK_PANELS = ('fgsm', 'pgd', 'bim')
COLOURS = {'lif_clean': '#9ecae1', 'hosnn_clean': '#fdae6b', 'lif_ft': '#3182bd', 'hosnn_ft': '#e6550d'}


def load(path):
    with open(path) as f:
        return json.load(f)


def eps_label(eps):
    return str(Fraction(eps).limit_denominator(1000))


def learning_curves_table(stages):
    lines = ['| stage | epoch | train loss | train acc | test acc | epoch time (s) |',
             '|---|---:|---:|---:|---:|---:|']
    for name in MODELS:
        for e in stages[name]['epochs']:
            lines.append(f"| {name} | {e['epoch']} | {e['train_loss']:.4f} | {100 * e['train_acc']:.2f} "
                         f"| {100 * e['test_acc']:.2f} | {e['train_time_s']:.0f} |")
    return '\n'.join(lines)


def plot(summary, stages, out_dir, ft):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = summary['robustness']
    clean = next(r for r in rows if r['attack'] == 'clean')
    fig, axes = plt.subplots(1, len(ATTACK_PANELS), figsize=(4.2 * len(ATTACK_PANELS), 3.6),
                             sharey=True)
    for ax, attack in zip(axes, ATTACK_PANELS):
        attack_rows = sorted((r for r in rows if r['attack'] == attack), key=lambda r: r['eps'])
        eps = [0.0] + [r['eps'] for r in attack_rows]
        for name in MODELS:
            acc = [100 * clean[name]] + [100 * r[name] for r in attack_rows]
            ax.plot([255 * e for e in eps], acc, marker='o', color=COLOURS[name],
                    label=TITLES[name].format(ft=ft))
        ax.set_title(f"{'PGD-7' if attack == 'pgd' else 'BIM-7' if attack == 'bim' else 'FGSM'}")
        ax.set_xlabel('eps (x/255)')
        ax.set_xticks([255 * e for e in eps], [f'{255 * e:g}' for e in eps])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy (%), {clean['n_samples']} test images")
    axes[-1].legend(fontsize=8, loc='lower left')
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'robustness.png'), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, names, title in ((axes[0], MODELS[:2], 'clean training'),
                             (axes[1], MODELS[2:], f'{ft} fine-tuning')):
        for name in names:
            epochs = stages[name]['epochs']
            x = [e['epoch'] + 1 for e in epochs]
            ax.plot(x, [100 * e['test_acc'] for e in epochs], marker='.', color=COLOURS[name],
                    label=f"{TITLES[name].format(ft=ft)}: clean test")
            ax.plot(x, [100 * e['train_acc'] for e in epochs], ls=':', color=COLOURS[name],
                    label='train (on the training attack)' if 'ft' in name else 'train')
        ax.set_title(title)
        ax.set_xlabel('epoch')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel('accuracy (%)')
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'learning_curves.png'), dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('run_dir')
    parser.add_argument('out_dir')
    args = parser.parse_args(argv)
    summary = load(os.path.join(args.run_dir, 'results.json'))
    stages = {name: load(os.path.join(args.run_dir, name, 'results.json')) for name in MODELS}
    ft = training_attack(summary['config']['ATTACK']['ft_method']).title
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, 'results.json'), 'w') as f:
        json.dump({'protocol': summary, 'stages': stages}, f, indent=1)
        f.write('\n')
    tables = ['## Robustness (accuracy %)', '', format_markdown_table(summary['robustness'], ft), '',
              '## Wall time per stage (s)', '', '| stage | wall time (s) |', '|---|---:|']
    tables += [f"| {name} | {info['wall_time_s']:.0f} |" for name, info in summary['stages'].items()]
    tables += ['', '## Learning curves', '', learning_curves_table(stages), '']
    with open(os.path.join(args.out_dir, 'tables.md'), 'w') as f:
        f.write('\n'.join(tables))
    try:
        plot(summary, stages, args.out_dir, ft)
    except ImportError:
        print('matplotlib is not installed: no plots', file=sys.stderr)
    print(f"wrote {args.out_dir}/results.json, tables.md" +
          ('' if not os.path.exists(os.path.join(args.out_dir, 'robustness.png'))
           else ', robustness.png, learning_curves.png'))


if __name__ == '__main__':
    main()
