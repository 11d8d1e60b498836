"""The verdict of `make demo`: the shipped zoo's clean-trained and FGSM-trained LIF and HoSNN
(checkpoints/fashionmnist/) on the first N Fashion-MNIST test images at eps = 8/255 (per time
step, not clamped: the published threat model) -- clean accuracy, the published PGD-7 and the
quick suite's per-sample worst case -- in one table, printed and written to <out>/verdict.md.
Each model's full report (robustness.json, report.md, per_sample.npz) goes to <out>/<model>/.

    python scripts/demo_verdict.py --samples 200 --out runs/demo

The quick suite runs without its 64/255 masking run (time); the zoo card's numbers are the full
suite's on 1 000 images (checkpoints/fashionmnist/README.md).
"""
import argparse
import os
import sys
import time
from argparse import Namespace
from fractions import Fraction

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robustness import checkpoint_evaluation  # noqa: E402
from runtime.checkpoint import atomic_write_text  # noqa: E402
from runtime.distributed import DistContext  # noqa: E402
from runtime.rng import seed_everything  # noqa: E402
from training.checkpoint_model import config_for_checkpoint  # noqa: E402
from training.cli import config_from_args  # noqa: E402
from training.experiment import build_model  # noqa: E402

ZOO = 'checkpoints/fashionmnist'
MODELS = (('lif_clean', 'LIF, clean'), ('hosnn_clean', 'HoSNN, clean'),
          ('lif_ft', 'LIF, FGSM-trained'), ('hosnn_ft', 'HoSNN, FGSM-trained'))
EPS = Fraction(8, 255)


def evaluate_zoo_model(name, samples, out, ctx):
    """The quick suite on one zoo checkpoint, through the driver evaluate.py uses."""
    ckpt = os.path.join(ZOO, f'{name}.pth')
    args = Namespace(dataset=3, config=None, seed=None, set=[
        f'DEFAULT.ckpt={ckpt}', 'DEFAULT.cleantrain=false', 'DEFAULT.advtrain=false',
        'DEFAULT.advtest=true', f'DEFAULT.test_samples={samples}'])
    cfg, _, _, _ = config_for_checkpoint(args, config_from_args)  # the neuron type from the file
    seed_everything(cfg['DEFAULT']['seed'])
    model = build_model(cfg, ckpt, ctx.device).eval()
    return checkpoint_evaluation.evaluate_checkpoint(
        cfg, model, ckpt, ctx, suite='quick', eps_list=[EPS], threats=['per-step'],
        clamps=[bool(cfg['ATTACK']['clamp'])], out_dir=os.path.join(out, name),
        sanity_eps=False, log=lambda message: None)


def published_pgd(result):
    for row in result['rows']:
        if row['attack'] == 'published-pgd' and Fraction(row['eps']) == EPS:
            return row['accuracy']
    return None


def worst(result):
    for entry in result['worst_case']:
        if Fraction(entry['eps']) == EPS:
            return entry['accuracy']
    return None


def verdict_table(results, samples, seconds):
    pct = lambda value: '–' if value is None else f"{100 * value:.1f}"
    header = '| accuracy (%), ε = 8/255 | ' + ' | '.join(title for _, title in MODELS) + ' |'
    lines = [f"Fashion-MNIST, first {samples} test images, ε = 8/255 per time step, not clamped "
             f"(the published threat model); the shipped zoo (`{ZOO}`).", '', header,
             '|---|' + '---:|' * len(MODELS),
             '| clean | ' + ' | '.join(pct(results[n]['clean_accuracy']) for n, _ in MODELS) + ' |',
             '| PGD-7 (**published attack**) | '
             + ' | '.join(pct(published_pgd(results[n])) for n, _ in MODELS) + ' |',
             '| worst case (quick suite, adaptive) | '
             + ' | '.join(f"**{pct(worst(results[n]))}**" for n, _ in MODELS) + ' |', '',
             "*Published attack*: the paper's PGD-7 through the published backward, which passes "
             "no gradient through the adaptive threshold. *Worst case*: an image counts as robust "
             "only if no attack of `evaluate.py --suite quick` fooled it (exact BPTT through "
             "membrane, reset and threshold under several surrogates, PGD-CE/CW, APGD-CE/DLR, "
             "their ensemble). The HoSNN's lead under the published attack does not survive the "
             "adaptive one.", '',
             f"Reports: `<out>/<model>/report.md`. {len(MODELS)} models in {seconds:.0f} s."]
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--samples', type=int, default=200, help='the first N test images')
    parser.add_argument('--out', default='runs/demo')
    args = parser.parse_args(argv)
    ctx = DistContext()
    results, start = {}, time.perf_counter()
    for name, title in MODELS:
        began = time.perf_counter()
        results[name] = evaluate_zoo_model(name, args.samples, args.out, ctx)
        print(f"{title}: clean {100 * results[name]['clean_accuracy']:.1f}%, PGD-7 (published "
              f"attack) {100 * published_pgd(results[name]):.1f}%, worst case (quick) "
              f"{100 * worst(results[name]):.1f}%  ({time.perf_counter() - began:.0f} s)", flush=True)
    table = verdict_table(results, args.samples, time.perf_counter() - start)
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, 'verdict.md'), table)
    print('\n' + table, flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
