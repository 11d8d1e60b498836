"""--resume, in one place: what a resume point is (``<out>/last.pth`` with the optimiser, scheduler,
per-rank RNG states and best accuracy that training saves besides the weights), how it is checked
against the config of the command line, and how the training state is restored from it.

    load_resume_point(out_dir, cfg, allow)   -> (checkpoint, config changes); refuses a changed
                                                config unless allowed
    refuse_overwriting(out_dir)              a new training run never replaces one
    record_config_changes(outputs, ...)      an accepted change: logged, and in results.json
    restore_training_state(checkpoint, ...)  optimiser, scheduler, best, RNG -> (start epoch, ...)
"""
import math
import os

from config import ConfigError, resolve
from runtime.checkpoint import CheckpointError, load_checkpoint
from runtime.rng import seed_everything, set_rng_states

# What training saves in every checkpoint besides the released {'net', 'epoch'}.
RESUME_KEYS = ('optimizer', 'scheduler', 'rng', 'best')
# A resumed run takes its weights from last.pth: the checkpoint it started from does not matter.
RESUME_IGNORED_KEYS = ('DEFAULT.ckpt',)
# What --resume is for besides crashes: training longer. The loop simply runs to the new count
# (recorded like any change); every other change needs --allow-config-change. (A softmax
# network's default T_max is its epochs: that change is then named as T_max.)
RESUME_FREE_KEYS = ('Network.epochs',)


def last_checkpoint(out_dir):
    return os.path.join(out_dir, 'last.pth')


def load_resume_point(out_dir, cfg, allow_config_change):
    """``(checkpoint, changes)``: ``<out_dir>/last.pth`` checked to be a resume point, and the
    config keys that differ from the ones it was trained with (``{key: (old, new)}``). A change
    other than ``Network.epochs`` is refused, naming the keys, unless ``allow_config_change``."""
    path = last_checkpoint(out_dir)
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume: '{path}' does not exist (nothing to resume)")
    checkpoint = check_resumable(load_checkpoint(path), path)
    changes = {}
    if isinstance(checkpoint.get('config'), dict):
        changes = config_changes(checkpoint['config'], cfg)
    refused = {key: change for key, change in changes.items() if key not in RESUME_FREE_KEYS}
    if refused and not allow_config_change:
        shown = '; '.join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in refused.items())
        raise ConfigError(f"--resume: the config differs from the one {path} was trained "
                          f"with ({shown[:400]}); pass --allow-config-change to apply the "
                          f"change from the next epoch, or resume without it")
    return checkpoint, changes


def check_resumable(checkpoint, path):
    """``--resume`` needs the optimiser, scheduler, RNG and best-accuracy state this project
    saves; a released-format file (``{'net', 'epoch'}`` only) has the weights alone."""
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"--resume: '{path}' holds weights only (no {', '.join(missing)}): it is a released "
            f"or exported checkpoint, not a resume point; to start from its weights use "
            f"--set DEFAULT.ckpt={path} with a new --out")
    if not isinstance(checkpoint['rng'], list) or not checkpoint['rng']:
        raise CheckpointError(f"--resume: '{path}' has no per-process RNG states")
    return checkpoint


def refuse_overwriting(out_dir):
    """A new training run in an ``--out`` that holds a run would replace its checkpoints."""
    if os.path.isfile(last_checkpoint(out_dir)):
        raise ConfigError(f"--out {out_dir} already holds a run (last.pth): pass --resume to "
                          f"continue it, or choose another --out")


def flatten_config(cfg, prefix=''):
    """``{'Section.key[.sub]': value}`` of a nested config."""
    flat = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, name + '.'))
        else:
            flat[name] = value
    return flat


def config_changes(saved, current):
    """``{key: (saved value, current value)}`` for every key that differs. The saved config is
    completed with today's defaults first, so a key added since it was written (e.g.
    ``ATTACK.ft_gradient``) counts as changed only when it is set to something else."""
    try:
        saved = resolve(saved)[0]
    except ConfigError:
        pass  # a config this version no longer accepts: compare it as saved (the keys will differ)
    old, new = flatten_config(saved), flatten_config(current)
    return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
            if key not in RESUME_IGNORED_KEYS and old.get(key) != new.get(key)}


def record_config_changes(outputs, cfg, checkpoint, changes):
    """Log an accepted config change and add it to results.json (``config_changes``: the epoch
    it was resumed after, each key's old and new value); results.json's config becomes ``cfg``."""
    if not changes:
        return
    outputs.log(f"warning: resuming with a changed config: "
                f"{', '.join(f'{k}={new!r} (was {old!r})' for k, (old, new) in changes.items())}")
    outputs.results['config'] = cfg
    outputs.results.setdefault('config_changes', []).append(
        {'resumed_after_epoch': checkpoint['epoch'],
         'changes': {key: {'from': old, 'to': new} for key, (old, new) in changes.items()}})


def restore_training_state(checkpoint, optimizer, scheduler, cfg, ctx, outputs):
    """Load the optimiser and scheduler states and every rank's RNG streams of a resume point.
    Returns ``(first epoch to train, best {'epoch', 'test_acc'}, best weights or None)``."""
    network = cfg['Network']
    optimizer.load_state_dict(checkpoint['optimizer'])
    scheduler.load_state_dict(checkpoint['scheduler'])
    # The saved states carry the saved lr and T_max; after a change accepted with
    # --allow-config-change the config's win (untouched otherwise: bit-exact resume).
    saved = (checkpoint.get('config') or {}).get('Network') or {}
    if saved and (saved.get('lr'), saved.get('T_max')) != (network['lr'], network['T_max']):
        apply_resumed_hyperparameters(optimizer, scheduler, network)
    start_epoch = checkpoint['epoch'] + 1
    best_path = os.path.join(outputs.out_dir, 'best.pth')
    best_state = load_checkpoint(best_path)['net'] if os.path.isfile(best_path) else None
    restore_rng_streams(checkpoint['rng'], cfg['DEFAULT']['seed'], start_epoch, ctx, outputs.log)
    outputs.log(f"resumed after epoch {checkpoint['epoch']}")
    return start_epoch, dict(checkpoint['best']), best_state


def apply_resumed_hyperparameters(optimizer, scheduler, network):
    """After the optimiser and scheduler states of a resumed run are loaded, make them follow the
    config's ``lr`` and ``T_max`` (a config change accepted with --allow-config-change): the
    cosine schedule continues at the current epoch as if it had started with them."""
    scheduler.T_max = network['T_max']
    scheduler.base_lrs = [network['lr'] for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group['initial_lr'] = network['lr']
        group['lr'] = scheduler.eta_min + (network['lr'] - scheduler.eta_min) * (
            1 + math.cos(math.pi * scheduler.last_epoch / scheduler.T_max)) / 2


def restore_rng_streams(saved, seed, start_epoch, ctx, log):
    """This rank's saved RNG states, when the run is resumed on as many processes as it was
    saved from; otherwise streams re-derived from (seed, epoch, rank)."""
    if len(saved) == ctx.world_size:
        set_rng_states(saved[ctx.rank])
        return
    # The DistributedSampler also deals the samples to ranks differently, so the run goes on
    # correctly but not as the uninterrupted run would have (README).
    seed_everything(rederived_rng_seed(seed, start_epoch, ctx.rank))
    log(f"warning: resuming a {len(saved)}-process run on {ctx.world_size}: per-process RNG "
        f"streams re-derived from the seed, epoch and rank; the sample order and the global "
        f"batch change")


def rederived_rng_seed(seed, epoch, rank):
    """The seed of rank ``rank``'s RNG streams when a run is resumed at ``epoch`` on another
    number of processes (the saved per-rank states do not fit): a pure function of the three,
    distinct from the start-of-run seeds ``seed + 1000 * rank``."""
    return seed + 1000 * rank + 1_000_003 * (epoch + 1)
