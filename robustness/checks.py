"""Gathering the per-sample results of every rank, the per-sample worst case, and the sanity
checks of a trustworthy robustness number (masking at a large ε, PGD-100 vs PGD-7, black box vs
white box, exactly-zero input gradients)."""
from fractions import Fraction

import numpy as np
import torch

from robustness.plan import row_label

SANITY_EPS = Fraction(64, 255)  # the worst case must fall to <= 1% here, else masking is suspected
SANITY_MAX_ACCURACY = 0.01
ZERO_GRADIENT_MAX_SHARE = 0.10  # more images than this with an exactly-zero input gradient fails
BLACK_BOX_MAX_EXTRA = 0.01      # Square may break at most this share of images white-box missed


def gather(evaluation, all_gather):
    """Every rank's per-sample results -> one table in the original sample order (rank 0)."""
    local = {'indices': evaluation.indices.numpy(), 'labels': evaluation.labels.cpu().numpy(),
             'clean_correct': evaluation.clean_correct.numpy(),
             'fooled': (torch.stack(evaluation.fooled).numpy() if evaluation.fooled
                        else np.zeros((0, len(evaluation.labels)), dtype=np.int8))}
    parts = all_gather(local)
    indices = np.concatenate([p['indices'] for p in parts])
    order = np.argsort(indices, kind='stable')
    return {'sample_index': indices[order],
            'labels': np.concatenate([p['labels'] for p in parts])[order],
            'clean_correct': np.concatenate([p['clean_correct'] for p in parts])[order],
            'fooled': np.concatenate([p['fooled'] for p in parts], axis=1)[:, order]}


def worst_case(rows, table):
    """Per (ε, threat, clamp): the share of images that no attack fooled, and how many images
    each attack broke first (in the order the attacks ran; 'clean' = misclassified unattacked)."""
    groups = {}
    for index, row in enumerate(rows):
        groups.setdefault((row['eps'], row['threat'], row['clamp']), []).append(index)
    results = []
    for (eps, threat, clamp), members in groups.items():
        broken = ~table['clean_correct'].astype(bool)
        first = {'clean': int(broken.sum())}
        for index in members:
            newly = (table['fooled'][index] == 1) & ~broken
            first[row_label(rows[index])] = int(newly.sum())
            broken |= newly
        n = len(broken)
        results.append({'eps': eps, 'threat': threat, 'clamp': clamp,
                        'accuracy': float((~broken).sum() / max(n, 1)), 'n_samples': int(n),
                        'broken_first': first,
                        'sanity_eps': any(rows[i].get('sanity_eps') for i in members)})
    return results


def sanity_checks(rows, worst, zero_shares):
    """The checks of a trustworthy robustness number, each ``{check, passed, detail}``."""
    checks = []
    for entry in worst:
        if Fraction(entry['eps']) != SANITY_EPS:
            continue
        passed = entry['accuracy'] <= SANITY_MAX_ACCURACY
        checks.append({'check': f"worst case <= {100 * SANITY_MAX_ACCURACY:g}% at eps={entry['eps']} "
                                f"({entry['threat']}, clamp={str(entry['clamp']).lower()})",
                       'passed': passed,
                       'detail': f"worst case {100 * entry['accuracy']:.2f}%" +
                                 ('' if passed else ': gradient masking suspected')})
    if not any(Fraction(e['eps']) == SANITY_EPS for e in worst):
        checks.append({'check': f"worst case <= {100 * SANITY_MAX_ACCURACY:g}% at eps=64/255",
                       'passed': None, 'detail': 'not run (--no-sanity-eps)'})
    pgd_by_steps = {}
    for row in rows:
        if row['attack'] == 'pgd' and row['steps'] in (7, 100) and row['loss'] == 'ce' \
                and row['restarts'] == 1:
            key = (row['eps'], row['threat'], row['clamp'], row['gradient'])
            pgd_by_steps.setdefault(key, {})[row['steps']] = row
    compared = False
    for (eps, threat, clamp, gradient), by_steps in pgd_by_steps.items():
        if 7 in by_steps and 100 in by_steps:
            compared = True
            a7, a100 = by_steps[7]['accuracy'], by_steps[100]['accuracy']
            n = by_steps[7]['n_samples']
            passed = a100 <= a7 + 1 / max(n, 1)  # one image of slack for the random starts
            checks.append({'check': f"PGD-100 not weaker than PGD-7 at eps={eps} ({threat}, "
                                    f"clamp={str(clamp).lower()}, {gradient})",
                           'passed': passed,
                           'detail': f"PGD-7 {100 * a7:.2f}%, PGD-100 {100 * a100:.2f}%"})
    if not compared:
        checks.append({'check': 'PGD-100 not weaker than PGD-7', 'passed': None,
                       'detail': 'this suite has no PGD-7/PGD-100 pair'})
    square = [r for r in rows if r['attack'] == 'square']
    for row in square:
        before = [r for r in rows if (r['eps'], r['threat'], r['clamp']) ==
                  (row['eps'], row['threat'], row['clamp']) and r['attack'] != 'square']
        white = [r for r in before if not r['attack'].startswith('transfer')]
        entry = next(e for e in worst if (e['eps'], e['threat'], e['clamp']) ==
                     (row['eps'], row['threat'], row['clamp']))
        extra = entry['broken_first'].get(row_label(row), 0)
        n = row['n_samples']
        passed = extra <= BLACK_BOX_MAX_EXTRA * n
        checks.append({'check': f"black-box (Square) not stronger than white-box at eps={row['eps']} "
                                f"({row['threat']}, clamp={str(row['clamp']).lower()})",
                       'passed': passed,
                       'detail': f"Square fooled {extra} of {n} images that all {len(white)} "
                                 f"white-box attacks missed (allowed: {BLACK_BOX_MAX_EXTRA * n:g})"})
    if not square:
        checks.append({'check': 'black-box not stronger than white-box', 'passed': None,
                       'detail': 'this suite has no black-box attack (use --suite full)'})
    for (threat, clamp, path), (zero, n) in zero_shares.items():
        share = zero / max(n, 1)
        checks.append({'check': f"share of exactly-zero input gradients ({path}, {threat}, "
                                f"clamp={str(clamp).lower()})",
                       'passed': share <= ZERO_GRADIENT_MAX_SHARE,
                       'detail': f"{zero} of {n} clean-correct images ({100 * share:.1f}%)"})
    return checks

