"""What an evaluation writes for a reader: report.md and the per_sample.npz arrays
(robust_accuracy.png is ``plots.py``'s)."""
import json

import numpy as np

from robustness.checks import SANITY_MAX_ACCURACY
from robustness.plan import PUBLISHED_LABEL, row_label


def per_sample_arrays(rows, table, worst):
    """The per_sample.npz payload: plain arrays only (loadable with ``allow_pickle=False``)."""
    group_of = {(e['eps'], e['threat'], e['clamp']): i for i, e in enumerate(worst)}
    worst_robust = np.zeros((len(worst), len(table['labels'])), dtype=bool)
    for key, i in group_of.items():
        broken = ~table['clean_correct'].astype(bool)
        for index, row in enumerate(rows):
            if (row['eps'], row['threat'], row['clamp']) == key:
                broken |= table['fooled'][index] == 1
        worst_robust[i] = ~broken
    return {'sample_index': table['sample_index'].astype(np.int64),
            'labels': table['labels'].astype(np.int64),
            'clean_correct': table['clean_correct'].astype(bool),
            'fooled': table['fooled'].astype(np.int8),
            'rows': np.array([json.dumps({k: r[k] for k in ('attack', 'gradient', 'loss', 'steps',
                                                             'restarts', 'eps', 'threat', 'clamp')})
                              for r in rows], dtype=np.str_),
            'worst_case_robust': worst_robust,
            'worst_case_groups': np.array([json.dumps({k: e[k] for k in ('eps', 'threat', 'clamp')})
                                           for e in worst], dtype=np.str_)}


def report_markdown(result):
    """report.md: the tables, the worst case, the checks, in words a reader can act on."""
    ckpt = result['checkpoint']
    lines = [f"# Robustness report: `{ckpt['path']}`", '',
             f"Checkpoint epoch {ckpt['epoch']}, sha256 `{ckpt['sha256'][:16]}…`; commit "
             f"`{result['commit']}`; suite `{result['suite']}`; {result['n_samples']} test images "
             f"(the first {result['n_samples']}); clean accuracy {100 * result['clean_accuracy']:.2f}%; "
             f"{result['world_size']} process(es) on {result['device']}; {result['wall_time_s']:.0f} s.",
             '']
    lines += [f"**Warning**: {warning}" for warning in result.get('warnings', [])]
    masking = [c for c in result['sanity'] if c['check'].startswith('worst case') and c['passed'] is False]
    if masking:
        lines += ['**Gradient masking suspected**: the worst case does not fall to '
                  f"{100 * SANITY_MAX_ACCURACY:g}% at ε = 64/255 — the robust accuracies below are "
                  'upper bounds that stronger attacks may lower.', '']
    lines += ["Rows marked *published attack* are the published FGSM / R-FGSM / PGD / BIM "
              "(SPEC §6: the published backward, the published loss, no random start); the others "
              "are adaptive (the published attacks perturb every time step, so they run under the "
              "per-step threat model only). `gradient` is the backward the attack differentiates "
              "(`published`, or exact BPTT `bptt:<surrogate>:<sharpness>`); `none` = black box; "
              "`partner:` = crafted on the partner model (transfer); `ensemble:a+b` = the mean "
              "gradient of several paths. Rows marked *(subset)* are the ranking sweep (PGD-CE "
              "through every path on the first images; each surrogate family sharpened while it "
              "helps); rows marked *(survivors)* ran only on the images every earlier attack "
              "missed (AutoAttack's cascade; `--standalone` runs every attack on every image), so "
              "their accuracy is the worst case after them. Square runs at the largest ε of the "
              "list only (5000 queries per image).", '',
              '## Worst case (an image counts as robust only if no attack fooled it)', '',
              '| ε | threat | clamp | worst-case accuracy (%) | images |', '|---|---|---|---:|---:|']
    for entry in result['worst_case']:
        lines.append(f"| {entry['eps']} | {entry['threat']} | {str(entry['clamp']).lower()} | "
                     f"**{100 * entry['accuracy']:.2f}** | {entry['n_samples']} |")
    lines += ['', '## Every attack', '',
              '| attack | gradient | loss | steps×restarts | ε | threat | clamp | accuracy (%) | '
              'first to break | time (s) |', '|---|---|---|---|---|---|---|---:|---:|---:|']
    first = {(e['eps'], e['threat'], e['clamp']): e['broken_first'] for e in result['worst_case']}
    for row in result['rows']:
        name = (f"{row['attack'][len('published-'):].upper()} (*{PUBLISHED_LABEL}*)"
                if row['label'] == PUBLISHED_LABEL else row['attack'])
        broke = first[(row['eps'], row['threat'], row['clamp'])].get(row_label(row), '')
        lines.append(f"| {name} | {row['gradient']} | {row['loss']} | {row['steps']}×{row['restarts']}"
                     f"{' (' + row['scope'] + ')' if row['scope'] != 'all' else ''} | {row['eps']} | "
                     f"{row['threat']} | {str(row['clamp']).lower()} | {100 * row['accuracy']:.2f} | "
                     f"{broke} | {row['time_s']:.0f} |")
    lines += ['', '## Sanity checks', '', '| check | result | detail |', '|---|---|---|']
    for check in result['sanity']:
        verdict = {True: 'pass', False: '**FAIL**', None: 'not run'}[check['passed']]
        lines.append(f"| {check['check']} | {verdict} | {check['detail']} |")
    lines += ['', result.get('plot_note') or '![robust accuracy against ε](robust_accuracy.png)', '']
    return '\n'.join(lines)
