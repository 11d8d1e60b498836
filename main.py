"""HoSNN: train, attack and evaluate spiking networks.

    python main.py -d 3                                   # one process (CPU or one GPU)
    torchrun --nproc_per_node=4 main.py -d 1              # DDP: NCCL on GPUs, gloo on CPUs
    python main.py -d 0 --set DEFAULT.cleantrain=false --set DEFAULT.ckpt=released.pth

The experiment is the YAML (``networks/*.yaml``, or ``--config``); ``--set`` overrides single keys.
The work is done by training.experiment.run_experiment; this file is its command line.
"""
import argparse
import copy
import os
import re
import sys

from config import ConfigError
from training.checkpoint_model import config_for_checkpoint
from training.cli import add_config_arguments, config_from_args, default_run_name, run_cli
from training.experiment import run_experiment


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument('--out', help='directory of this run (default: checkpoints/<run name>; '
                        'an evaluation of DEFAULT.ckpt is named after the checkpoint)')
    parser.add_argument('--resume', action='store_true', help='continue from <out>/last.pth')
    parser.add_argument('--allow-config-change', action='store_true',
                        help='with --resume: accept a config that differs from the saved one '
                        '(the change applies from the next epoch and is recorded in results.json)')
    parser.add_argument('--seed', type=int, help='overrides DEFAULT.seed')
    parser.add_argument('--device', choices=('cpu', 'cuda'), help='default: cuda when available')
    parser.add_argument('--workers', type=int, help='DataLoader workers per process '
                        '(default: 0 on CPU, 4 on CUDA)')
    parser.add_argument('--nds-out', help='where Network.save_target writes the NDS '
                        '(default: <out>/nds.pt)')
    return parser


def default_out(cfg):
    """``checkpoints/<dataset>-<model>-<mode>``; a run that starts from a checkpoint adds its
    name (``...-eval-<its folder>-<its file>``), so that evaluating two checkpoints never writes
    into one folder."""
    name = default_run_name(cfg)
    ckpt = cfg['DEFAULT']['ckpt']
    if ckpt is not None:
        folder = os.path.basename(os.path.dirname(os.path.abspath(ckpt)))
        stem = os.path.splitext(os.path.basename(ckpt))[0]
        name += '-' + re.sub(r'[^A-Za-z0-9._-]+', '_', f"{folder}-{stem}" if folder else stem)
    return os.path.join('checkpoints', name)


def prepare(args):
    """The config; with ``-d N`` and ``DEFAULT.ckpt``, its neuron type is the checkpoint's."""
    return config_for_checkpoint(args, config_from_args)


def execute_run(args, prepared, ctx):
    cfg, warnings, _, notes = prepared
    if args.allow_config_change and not args.resume:
        raise ConfigError("--allow-config-change is for --resume (a new run takes its config as is)")
    if ctx.is_main:
        for note in notes:
            print(note, flush=True)
    out_dir = args.out or default_out(cfg)
    run_experiment(copy.deepcopy(cfg), out_dir, ctx, resume=args.resume, workers=args.workers,
                   nds_out=args.nds_out, warnings=warnings,
                   allow_config_change=args.allow_config_change)


def main(argv=None):
    return run_cli(get_args_parser().parse_args(argv), prepare, execute_run)


if __name__ == '__main__':
    sys.exit(main())
