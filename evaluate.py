"""Adaptive robustness evaluation of one checkpoint, a thin command line over ``robustness.evaluate``

    python evaluate.py --ckpt best.pth -d 3 --suite quick --samples 1000 --out runs/eval
    python evaluate.py --ckpt best.pth -d 3 --suite full --eps 2/255,4/255,8/255 --threat per-step,static
    torchrun --standalone --nproc_per_node=2 evaluate.py --ckpt best.pth -d 3 --partner lif.pth

Writes robustness.json, per_sample.npz, report.md and robust_accuracy.png into --out. Suites
(robustness/plan.py): ``published`` (the published FGSM/R-FGSM/PGD/BIM only); ``quick`` (a PGD-CE
sweep through the published backward and two exact-BPTT surrogates, each sharpened while it
helps, on 100 images; APGD-CE/DLR through the strongest path and APGD-CE on the ensemble of the
two strongest); ``full`` (the sweep over six surrogate shapes on 150 images; APGD-CE-100 through
the strongest path at 2x and 4x its sharpness, the three strongest, fast-sigmoid and arctan at
k = 10 and the strongest family's ensemble; APGD-DLR, CW, transfer; PGD-7 vs PGD-100 and Square
with 5000 queries on the first images). The expensive attacks run only on the images no earlier
attack broke (AutoAttack's cascade) unless --standalone. Every suite adds a sanity run at
eps = 64/255 and the checks of report.md.
"""
import argparse
import copy
import os
import sys

from robustness import checkpoint_evaluation, plan
from robustness.threats import THREATS, parse_eps
from runtime.checkpoint import load_checkpoint
from config import RANDOM_NDS, ConfigError, apply_overrides, load_config, resolve, sample_count
from errors import without_warning
from runtime.rng import seed_everything
from training.checkpoint_model import config_for_checkpoint, model_of_checkpoint
from training.cli import add_config_arguments, config_from_args, run_cli
from training.experiment import build_model

CLAMP_CHOICES = ('config', 'true', 'false', 'both')


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--ckpt', required=True, help='the checkpoint to evaluate')
    add_config_arguments(parser)
    parser.add_argument('--suite', choices=plan.SUITES, default='quick',
                        help='published: the published attacks only; quick (default): the cheap '
                        'cascade (budget: 3 min per eps for 1000 Fashion-MNIST images on 2 idle '
                        'CPU cores); full: every surrogate family, more paths, Square (budget: 10 min)')
    parser.add_argument('--eps', help='comma-separated pixel eps, e.g. 2/255,4/255,8/255 '
                        '(default: ATTACK.strength)')
    parser.add_argument('--samples', help='the first N test images, an integer (default: all)')
    parser.add_argument('--threat', default='per-step',
                        help="per-step, static, or both comma-separated (default: per-step)")
    parser.add_argument('--clamp', choices=CLAMP_CHOICES, default='config',
                        help='clamp to the valid pixel range (default: ATTACK.clamp)')
    parser.add_argument('--no-sanity-eps', action='store_true',
                        help='skip the extra run at eps=64/255 (its masking check is then not run)')
    parser.add_argument('--standalone', action='store_true',
                        help="run every attack on every image and report each one's own accuracy "
                        "(default: the cascade -- the ranking sweep on a subset, the expensive "
                        "attacks only on images no earlier attack broke)")
    parser.add_argument('--partner', help='checkpoint of the partner model, for transfer attacks')
    parser.add_argument('--partner-config', help="the partner's YAML (default: the config stored "
                        "in its checkpoint, else this config with the other neuron model)")
    parser.add_argument('--partner-set', action='append', default=[], metavar='SECTION.KEY=VALUE',
                        help="override a key of the partner's config (repeatable)")
    parser.add_argument('--batch-size', type=int, help='images per attack batch '
                        '(default: Network.batch_size)')
    parser.add_argument('--out', help='output directory (default: <checkpoint dir>/robustness-<suite>)')
    parser.add_argument('--seed', type=int, help='overrides DEFAULT.seed')
    parser.add_argument('--device', choices=('cpu', 'cuda'), help='default: cuda when available')
    return parser


# Evaluation only: no training stage, the checkpoint is the model.
EVAL_ONLY = ('DEFAULT.cleantrain=false', 'DEFAULT.advtrain=false', 'DEFAULT.advtest=true')


def partner_config(args, cfg):
    """The partner's resolved config: --partner-config, else the config stored in its checkpoint
    (our checkpoints keep it), else this config with the other neuron model. The NDS comes with
    the partner's weights, so its ``ckpt_v`` is dropped."""
    overrides = [f"DEFAULT.ckpt={args.partner}", 'Network.ckpt_v=null', *EVAL_ONLY]
    if args.partner_config:
        partner, _ = load_config(args.partner_config, list(args.partner_set) + overrides)
        return partner
    checkpoint = load_checkpoint(args.partner)
    stored = checkpoint.get('config')
    raw = copy.deepcopy(cfg)
    if isinstance(stored, dict) and isinstance(stored.get('Layers'), dict) \
            and isinstance(stored.get('Network'), dict):
        raw['Layers'] = copy.deepcopy(stored['Layers'])
    raw['Network']['model'] = model_of_checkpoint(checkpoint, args.partner)[0]
    apply_overrides(raw, list(args.partner_set) + overrides)
    try:
        partner, _ = resolve(raw)
    except ConfigError as exc:
        raise ConfigError(f"--partner {args.partner}: {exc}") from None
    return partner


def prepare(args):
    args.set = [*args.set, f"DEFAULT.ckpt={args.ckpt}", *EVAL_ONLY]
    if args.samples is not None:  # read here, not by argparse: a bad value is one line, exit 2
        text = args.samples.strip()
        count = int(text) if text.isascii() and text.isdigit() else args.samples
        args.set.append(f"DEFAULT.test_samples={sample_count(count, '--samples')}")
    cfg, warnings, _, notes = config_for_checkpoint(args, config_from_args)
    warnings = without_warning(warnings, RANDOM_NDS)  # the NDS is in the weights
    try:
        eps_list = ([parse_eps(e) for e in args.eps.split(',') if e.strip()]
                    if args.eps else [parse_eps(e, f"ATTACK.strength[{i}]")
                                      for i, e in enumerate(cfg['ATTACK']['strength'])])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not eps_list:
        raise ConfigError("no eps to evaluate: pass --eps 8/255 or set ATTACK.strength")
    threats = [t.strip() for t in args.threat.split(',') if t.strip()]
    for threat in threats:
        if threat not in THREATS:
            raise ConfigError(f"--threat {threat!r}: choose per-step, static or both "
                              f"('per-step,static')")
    if args.suite == 'published' and threats != ['per-step']:
        raise ConfigError("--suite published: the published attacks perturb every time step; "
                          "use --threat per-step (or another suite for the static threat model)")
    clamps = {'config': [bool(cfg['ATTACK']['clamp'])], 'true': [True], 'false': [False],
              'both': [False, True]}[args.clamp]
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    partner = partner_config(args, cfg) if args.partner else None
    load_checkpoint(args.ckpt)  # a bad checkpoint fails before any data is read
    return cfg, warnings, notes, eps_list, threats, clamps, partner


def execute(args, prepared, ctx):
    cfg, warnings, notes, eps_list, threats, clamps, partner_cfg = prepared
    out_dir = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)),
                                       f"robustness-{args.suite}")
    log = (lambda message: print(message, flush=True)) if ctx.is_main else (lambda message: None)
    for warning in warnings:
        log(f"warning: {warning}")
    for note in notes:
        log(note)
    seed_everything(cfg['DEFAULT']['seed'])
    model = build_model(cfg, args.ckpt, ctx.device).eval()
    partner = build_model(partner_cfg, args.partner, ctx.device).eval() if partner_cfg else None
    checkpoint_evaluation.evaluate_checkpoint(
        cfg, model, args.ckpt, ctx, suite=args.suite, eps_list=eps_list, threats=threats,
        clamps=clamps, out_dir=out_dir, partner=partner, partner_path=args.partner,
        batch_size=args.batch_size, sanity_eps=not args.no_sanity_eps, log=log,
        standalone=args.standalone)


def main(argv=None):
    return run_cli(get_args_parser().parse_args(argv), prepare, execute)


if __name__ == '__main__':
    sys.exit(main())
