"""HoSNN: train, attack and evaluate spiking networks.

    python main.py -d 3                                   # one process (CPU or one GPU)
    torchrun --nproc_per_node=4 main.py -d 1              # DDP: NCCL on GPUs, gloo on CPUs
    python main.py -d 0 --set DEFAULT.cleantrain=false --set DEFAULT.ckpt=released.pth

The experiment is the YAML (``networks/*.yaml``, or ``--config``); ``--set`` overrides single keys.
The work is done by runner.run_experiment; this file is its command line.
"""
import argparse
import copy
import os
import sys

from runner import add_config_arguments, config_from_args, default_run_name, run_cli, run_experiment


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument('--out', help='directory of this run (default: checkpoints/<run name>)')
    parser.add_argument('--resume', action='store_true', help='continue from <out>/last.pth')
    parser.add_argument('--seed', type=int, help='overrides DEFAULT.seed')
    parser.add_argument('--device', choices=('cpu', 'cuda'), help='default: cuda when available')
    parser.add_argument('--workers', type=int, help='DataLoader workers per process '
                        '(default: 0 on CPU, 4 on CUDA)')
    parser.add_argument('--nds-out', help='where save_target writes the NDS '
                        '(default: spikedata/<dataset>/<run name>.pt)')
    return parser


def execute_run(args, prepared, ctx):
    cfg, warnings, _ = prepared
    out_dir = args.out or os.path.join('checkpoints', default_run_name(cfg))
    run_experiment(copy.deepcopy(cfg), out_dir, ctx, resume=args.resume, workers=args.workers,
                   nds_out=args.nds_out, warnings=warnings)


def main(argv=None):
    return run_cli(get_args_parser().parse_args(argv), config_from_args, execute_run)


if __name__ == '__main__':
    sys.exit(main())
