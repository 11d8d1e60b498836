"""The command-line glue every entry point (main.py, protocol.py, evaluate.py) shares:

    add_config_arguments(parser)     -d N | --config PATH, and --set SECTION.KEY=VALUE
    config_from_args(args)           -> (resolved config, warnings, config file)
    run_cli(args, prepare, execute)  prepare(args) checks, then execute(args, prepared, ctx) runs;
                                     a UserError is one line on stderr and its exit status (2)
    default_run_name(cfg)            <dataset>-<model>-<mode>
"""
import sys

from config import ConfigError, config_path_for_dataset, load_config
from datasets import DATASETS
from errors import UserError
from runtime.distributed import cleanup_distributed, init_distributed, wait_for_all_ranks


def add_config_arguments(parser, set_help='override one config key (repeatable; the value is '
                         'read as YAML)'):
    """``-d N`` | ``--config PATH`` (one of them required) and ``--set SECTION.KEY=VALUE``."""
    source = parser.add_mutually_exclusive_group(required=True)
    indices = [spec.index for spec in DATASETS.values()]
    source.add_argument('-d', '--dataset', type=int, choices=indices,
                        metavar=f"{{{min(indices)}..{max(indices)}}}",
                        help=f"networks/{{{','.join(DATASETS)}}}.yaml")
    source.add_argument('--config', help='a YAML file in the schema of networks/*.yaml')
    parser.add_argument('--set', action='append', default=[], metavar='SECTION.KEY=VALUE',
                        help=set_help)
    return parser


def config_from_args(args):
    """``(config, warnings, config file)``; raises ConfigError."""
    path = args.config if args.config is not None else config_path_for_dataset(args.dataset)
    overrides = list(args.set) + ([f"DEFAULT.seed={args.seed}"] if args.seed is not None else [])
    cfg, warnings = load_config(path, overrides)
    return cfg, warnings, path


def check_common_flags(args):
    """Flags every entry point shares that argparse cannot bound."""
    workers = getattr(args, 'workers', None)
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers must be >= 0 (DataLoader worker processes), got {workers}")


def run_cli(args, prepare, execute):
    """``prepare(args)`` checks the config (before any process group or data); then
    ``execute(args, prepared, ctx)`` runs. A UserError (config, checkpoint, data, output, launch,
    divergence) is one line on stderr and exit status 2, whatever stage it comes from."""
    try:
        check_common_flags(args)
        prepared = prepare(args)
        ctx = init_distributed(args.device)
    except UserError as exc:
        return report(exc)
    try:
        execute(args, prepared, ctx)
        wait_for_all_ranks(ctx)
    except UserError as exc:
        if exc.on_every_rank:
            # Without the barrier one rank may destroy the process group while the other still
            # talks to it, and gloo aborts the first (exit -6 instead of 2, seen under load).
            wait_for_all_ranks(ctx)
        return report(exc)
    finally:
        cleanup_distributed()
    return 0


def report(error):
    """Say a UserError in one line (no traceback: the message names what to fix)."""
    print(f"error: {error}", file=sys.stderr)
    return error.exit_status


def default_run_name(cfg):
    default, network = cfg['DEFAULT'], cfg['Network']
    mode = 'advtrain' if default['advtrain'] else 'cleantrain' if default['cleantrain'] else 'eval'
    return f"{network['dataset']}-{network['model']}-{mode}"
