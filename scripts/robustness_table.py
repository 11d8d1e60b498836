"""Put several evaluate.py results side by side: the published-attack table and the adaptive one
(per-sample worst case), the strongest single attacks, the sanity checks, and one plot.

    python scripts/robustness_table.py --out results/fashionmnist/adaptive_full \\
        "LIF, clean=runs/adaptive_full/lif_clean" "HoSNN, clean=runs/adaptive_full/hosnn_clean"

Each argument is ``TITLE=DIR`` (or ``TITLE=DIR/robustness.json``). Writes ``tables.md`` and
``robust_accuracy.png`` (with matplotlib) into ``--out``, and prints the tables. Only rows at the
evaluation's own ε list are tabled (the 64/255 masking check is reported as a sanity check).
"""
import argparse
import json
import os
import sys
from fractions import Fraction

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robustness.plan import PUBLISHED_LABEL, row_label  # noqa: E402
from robustness.plots import figure_png, finish_accuracy_axes  # noqa: E402
from runtime.checkpoint import atomic_write, atomic_write_text  # noqa: E402

PUBLISHED_PGD = 'published-pgd'


def load(argument):
    title, sep, path = argument.partition('=')
    if not sep or not title or not path:
        raise SystemExit(f"error: expected TITLE=DIR, got {argument!r}")
    if os.path.isdir(path):
        path = os.path.join(path, 'robustness.json')
    try:
        with open(path) as f:
            return title, json.load(f)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {path}: {exc}") from None


def percent(x):
    return f"{100 * x:.1f}"


def eps_list(result):
    return sorted({r['eps'] for r in result['worst_case'] if not r.get('sanity_eps')},
                  key=lambda e: Fraction(e))


def group_rows(result, threat='per-step', clamp=False):
    return [r for r in result['rows'] if r['threat'] == threat and r['clamp'] == clamp]


def published_pgd(result, eps):
    for row in group_rows(result):
        if row['attack'] == PUBLISHED_PGD and row['eps'] == eps:
            return row['accuracy']
    return None


def worst(result, eps):
    for entry in result['worst_case']:
        if entry['eps'] == eps and entry['threat'] == 'per-step' and entry['clamp'] is False:
            return entry['accuracy']
    return None


def is_cascade(result, eps):
    """Whether the adaptive attacks at ``eps`` ran as a cascade (each on the images the earlier
    ones missed; Square always does, so it does not count) rather than ``--standalone``."""
    return any(r['scope'] == 'survivors' and r['attack'] != 'square'
               for r in group_rows(result) if r['eps'] == eps)


def strongest_single(result, eps):
    """The adaptive attack with the lowest accuracy of its own, from the rows run on every image
    (a ``--standalone`` run). None for a cascade: there a row's accuracy is the worst case after
    it, and the only rows on every image are the sweep and the PGD-7/100 check, so the lowest of
    them is not the strongest attack."""
    if is_cascade(result, eps):
        return None
    rows = [r for r in group_rows(result) if r['eps'] == eps and r['scope'] == 'all'
            and not r['attack'].startswith('published-')]
    return min(rows, key=lambda r: r['accuracy'], default=None)


def cascade_breaks(result, eps):
    """``(label, newly_broken)`` of each cascade row at ``eps`` that broke an image, in run order."""
    return [(row_label(r), r['newly_broken']) for r in group_rows(result)
            if r['eps'] == eps and r['scope'] == 'survivors' and r.get('newly_broken')]


def sweep_table(results, eps):
    """PGD-CE-10 at ``eps`` under each gradient path of the suite's sweep: how much an attack's
    strength depends on the backward it differentiates."""
    def sweep(result):
        return {r['gradient']: r['accuracy'] for r in group_rows(result)
                if r['attack'] == 'pgd' and r['loss'] == 'ce' and r['steps'] == 10
                and r['eps'] == eps and r['path_choice'] == 'fixed'}
    sweeps = [sweep(result) for _, result in results]
    paths = list(dict.fromkeys(path for found in sweeps for path in found))
    if len(paths) < 2:
        return []
    lines = ['', f'## Gradient paths: PGD-CE, 10 steps, at {eps}', '',
             'Accuracy (%) under the same attack differentiated through each backward '
             '(`published` = the published backward; `bptt:<surrogate>:<sharpness>` = exact BPTT '
             'through membrane, reset and threshold).', '',
             '| gradient | ' + ' | '.join(title for title, _ in results) + ' |',
             '|---|' + '---:|' * len(results)]
    for path in paths:
        cells = [percent(found[path]) if path in found else '–' for found in sweeps]
        lines.append(f'| {path} | ' + ' | '.join(cells) + ' |')
    return lines


def markdown(results):
    eps = eps_list(results[0][1])
    cell = lambda x: '–' if x is None else percent(x)  # noqa: E731
    lines = ['## Published attack and adaptive worst case', '',
             'Accuracy (%) on the first {} test images, per-step perturbation, not clamped. '
             '"PGD-7 (published attack)" is the published PGD (its gradient cannot see the '
             'adaptive threshold); "worst case" counts an image as robust only if no attack of '
             'the suite fooled it.'.format(results[0][1]['n_samples']), '',
             '| model | clean | ' + ' | '.join(f'PGD-7, {PUBLISHED_LABEL}, {e}' for e in eps)
             + ' | ' + ' | '.join(f'**worst case, {e}**' for e in eps) + ' |',
             '|---|---:|' + '---:|' * (2 * len(eps))]
    for title, result in results:
        lines.append(f"| {title} | {percent(result['clean_accuracy'])} | "
                     + ' | '.join(cell(published_pgd(result, e)) for e in eps) + ' | '
                     + ' | '.join(f"**{cell(worst(result, e))}**" for e in eps) + ' |')
    largest = eps[-1]
    lines += ['', f'## The strongest single attacks at {largest}', '',
              'From `--standalone` runs (every attack on every image). A cascade run (the '
              'default) has no single-attack accuracies: each attack ran only on the images the '
              'earlier ones missed, so its row lists how many images each attack broke that all '
              'earlier ones had missed (`newly_broken`).', '',
              '| model | strongest single attack | its accuracy | attacks that broke the most '
              'images first (worst case) |', '|---|---|---:|---|']
    for title, result in results:
        if is_cascade(result, largest):
            breaks = cascade_breaks(result, largest)
            lines.append(f"| {title} | – (cascade run) | – | "
                         + (', '.join(f"{name}: +{n}" for name, n in breaks) or 'none') + ' |')
            continue
        best = strongest_single(result, largest)
        entry = next(e for e in result['worst_case'] if e['eps'] == largest)
        top = sorted(((n, name) for name, n in entry['broken_first'].items() if name != 'clean'),
                     reverse=True)[:3]
        lines.append(f"| {title} | {row_label(best) if best else '–'} | "
                     f"{cell(best['accuracy'] if best else None)} | "
                     + ', '.join(f"{name}: {n}" for n, name in top) + ' |')
    lines += sweep_table(results, largest)
    lines += ['', '## Sanity checks', '', '| model | passed | failed |', '|---|---:|---|']
    for title, result in results:
        failed = [c['check'] + ': ' + c['detail'] for c in result['sanity'] if c['passed'] is False]
        passed = sum(c['passed'] is True for c in result['sanity'])
        lines.append(f"| {title} | {passed} of {len(result['sanity'])} | "
                     f"{'; '.join(failed) if failed else 'none'} |")
    # evaluate.py's spike diagnostics (a silent output layer, one-class predictions): a table of
    # such a model's numbers must not read as a result
    warned = [f"- **warning ({title})**: {w}" for title, result in results
              for w in result.get('warnings', [])]
    if warned:
        lines += [''] + warned
    lines += ['', '## Runs', '', '| model | checkpoint | sha256 | suite | commit | wall time |',
              '|---|---|---|---|---|---:|']
    for title, result in results:
        ckpt = result['checkpoint']
        lines.append(f"| {title} | `{ckpt['path']}` (epoch {ckpt['epoch']}) | "
                     f"`{ckpt['sha256'][:16]}…` | {result['suite']} | `{result['commit'][:7]}` | "
                     f"{result['wall_time_s'] / 60:.1f} min |")
    return '\n'.join(lines) + '\n'


def plot(results):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for (title, result), colour in zip(results, colours * 4):
        eps = eps_list(result)
        xs = [float(Fraction(e)) * 255 for e in eps]
        published = [published_pgd(result, e) for e in eps]
        if None not in published:
            ax.plot(xs, [100 * p for p in published], ':', marker='.', color=colour,
                    label=f'{title}: PGD-7, {PUBLISHED_LABEL}')
        ax.plot(xs, [100 * worst(result, e) for e in eps], '-', marker='o', linewidth=2,
                color=colour, label=f'{title}: worst case')
    finish_accuracy_axes(ax, legend_fontsize=7)
    return figure_png(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('runs', nargs='+', help='TITLE=DIR of an evaluate.py output')
    parser.add_argument('--out', required=True, help='folder for tables.md and robust_accuracy.png')
    args = parser.parse_args(argv)
    results = [load(argument) for argument in args.runs]
    text = markdown(results)
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "tables.md"), text)
    png = plot(results)
    if png is not None:
        atomic_write(os.path.join(args.out, 'robust_accuracy.png'), lambda f: f.write(png))
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
