"""What every entry point shares: the config from the command line, the model (and its checkpoint),
the data loaders, one training run (train -> NDS -> adversarial test), and the CLI wrapper that
turns user errors into one line and exit status 2.

``main.py``, ``protocol.py`` (and ``evaluate.py``) are thin command lines over this module:

    run_cli(args, prepare, execute)      prepare(args) checks the config, then execute(args, prepared, ctx)
    config_from_args(args)               -d / --config + --set (+ --seed) -> (config, warnings, file)
    build_model(cfg, ckpt=None, device=None)   the network of a config, weights from a checkpoint
    build_loaders(cfg, ctx, workers)     train (DistributedSampler), test and NDS loaders
    run_experiment(cfg, out_dir, ctx, ...)     one run: (train) -> (record the NDS) -> (adversarial test)
"""
import inspect
import math
import os
import random
import sys

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from attack import Normalization, attack_bounds
from runtime.checkpoint import (CheckpointError, check_resumable, load_checkpoint, load_weights,
                        rederived_rng_seed, rng_states, set_rng_states)
from config import (ConfigError, attack_strengths, config_path_for_dataset, input_shape, load_config,
                    resolve)
from datasets import DATASETS, DatasetNotFound, build_datasets
from training.diagnostics import SpikeMonitor, diagnose
from runtime.distributed import (LaunchError, ShardSampler, all_gather_object, broadcast_buffers,
                         cleanup_distributed, init_distributed, wait_for_all_ranks)
from training.engine import adversarial_test, build_optimizer, evaluate, record_nds, train_one_epoch
from training.guards import TrainingDiverged, TrainingGuard
from training.adversarial import build_adversary, selection_eps, split_training_set
from layers import ANN, build_network
from runtime.outputs import RunOutputs
from runtime.rundir import checkpoint_bytes, open_run_directory

USER_ERRORS = (ConfigError, CheckpointError, DatasetNotFound, TrainingDiverged, LaunchError)
EXIT_USER_ERROR = 2
SAVE_EVERY_EPOCHS = 100
# The buffers (NDS, BN running statistics) are not re-sent from rank 0 before every forward:
# the NDS never changes and the BN statistics are broadcast before each evaluation and save
# (distributed.broadcast_buffers). The keyword was renamed in recent torch releases.
NO_BUFFER_SYNC_PER_STEP = (
    {'forward_sync_buffers': False}
    if 'forward_sync_buffers' in inspect.signature(DistributedDataParallel).parameters
    else {'broadcast_buffers': False})


# --- The command line -----------------------------------------------------------------------------

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
    ``execute(args, prepared, ctx)`` runs. A user error (config, checkpoint, data) is one line on
    stderr and exit status 2, whatever stage it comes from."""
    try:
        check_common_flags(args)
        prepared = prepare(args)
        ctx = init_distributed(args.device)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        execute(args, prepared, ctx)
        wait_for_all_ranks(ctx)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        cleanup_distributed()
    return 0


# --- Model and data ---------------------------------------------------------------------------

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg, ckpt=None, device=None):
    """The network of a resolved config in ``DEFAULT.dtype``; with the weights of the checkpoint
    file ``ckpt`` (read weights-only, loaded strictly) and moved to ``device`` when given.
    Initial weights come from torch's global RNG (seed it first)."""
    dtype = getattr(torch, cfg['DEFAULT']['dtype'])
    model = build_network(cfg['Network'], cfg['Layers'], input_shape(cfg)).to(dtype)  # or the ANN
    if ckpt is not None:
        load_model_weights(model, load_checkpoint(ckpt), ckpt, cfg)
    return model if device is None else model.to(device)


def load_model_weights(model, checkpoint, path, cfg):
    """load_weights, after checking that the checkpoint's neuron model is the config's: a LIF
    checkpoint in an ALIF config (or the reverse) is a one-line error saying which to set.
    The checkpoint's NDS (TA-LIF ``target_train``) replaces the one ``Network.ckpt_v`` loaded."""
    saved_adaptive = any(key.endswith('theta_v') for key in checkpoint['net'])
    model_name = cfg['Network']['model']
    # An ANN twin's weights have a LIF network's keys and shapes: only the saved config tells
    # them apart (released checkpoints have none, and are spiking).
    saved_model = ((checkpoint.get('config') or {}).get('Network') or {}).get('model')
    if (saved_model == ANN) != (model_name == ANN):
        saved = 'an ANN' if saved_model == ANN else 'a spiking network'
        raise CheckpointError(f"checkpoint '{path}' holds {saved}, but Network.model is "
                              f"{model_name}: set Network.model={saved_model or 'LIF'}")
    if saved_adaptive != model.settings.adaptive:
        saved = 'a TA-LIF (ALIF) network: it has theta_v and an NDS' if saved_adaptive \
            else 'a LIF network: it has no theta_v and no NDS'
        raise CheckpointError(f"checkpoint '{path}' holds {saved}, but Network.model is "
                              f"{model_name}: set Network.model={'ALIF' if saved_adaptive else 'LIF'}")
    load_weights(model, checkpoint, path)


def nds_buffers(model):
    """``{layer name: NDS tensor}`` of the TA-LIF layers (empty for LIF networks)."""
    return {layer.name: layer.target_train.detach().clone() for layer in model.layers
            if getattr(layer, 'target_train', None) is not None}


def nds_source_note(cfg, before, model, ckpt_path):
    """Which NDS a TA-LIF model loaded from a checkpoint uses (the checkpoint's, always: it is
    the one its weights were trained with), as a line to log: a warning when ``Network.ckpt_v``
    is also given and holds another NDS. ``before``: nds_buffers() before the weights."""
    if not before:
        return None
    ckpt_v = cfg['Network']['ckpt_v']
    after = nds_buffers(model)
    if ckpt_v is None:
        return f"the TA-LIF layers use the NDS stored in '{ckpt_path}'"
    if any(not torch.equal(before[name], after[name]) for name in before):
        return (f"warning: Network.ckpt_v ({ckpt_v}) differs from the NDS stored in "
                f"'{ckpt_path}': the checkpoint's NDS is used (the one its weights were trained "
                f"with); set Network.ckpt_v=null to silence this")
    return f"the TA-LIF layers use the NDS of '{ckpt_path}' (the same as Network.ckpt_v)"


RANDOM_NDS_WARNING = 'Network.ckpt_v is null'  # config.resolve's warning about the random NDS


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


# A resumed run takes its weights from last.pth: the checkpoint it started from does not matter.
RESUME_IGNORED_KEYS = ('DEFAULT.ckpt',)
# What --resume is for besides crashes: training longer. The loop simply runs to the new count
# (recorded like any change); every other change needs --allow-config-change. (A softmax
# network's default T_max is its epochs: that change is then named as T_max.)
RESUME_FREE_KEYS = ('Network.epochs',)


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


def build_loaders(cfg, ctx, workers, validation=False):
    """``(train, test, nds)`` loaders of the config's data set for this rank; with
    ``validation``, a fourth: the held-out validation split of ``DEFAULT.select: robust`` (None
    otherwise). Those images are never in the training (or NDS) loader."""
    default, network = cfg['DEFAULT'], cfg['Network']
    train_set, test_set = build_datasets(network['dataset'], network['data_path'],
                                         default['train_samples'], default['test_samples'])
    train_set, val_set = split_training_set(cfg, train_set)
    if workers is None:
        workers = 4 if ctx.device.type == 'cuda' else 0
    common = dict(batch_size=network['batch_size'], num_workers=workers,
                  pin_memory=ctx.device.type == 'cuda', persistent_workers=workers > 0)
    # DistributedSampler also for one process: the same seeded order on any number of ranks.
    train_sampler = torch.utils.data.DistributedSampler(
        train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=default['seed'])
    train_loader = torch.utils.data.DataLoader(train_set, sampler=train_sampler, **common)
    test_loader = torch.utils.data.DataLoader(test_set, sampler=ShardSampler(len(test_set), ctx),
                                              **common)
    # The NDS is recorded over the whole training set, each sample once, in a fixed order.
    nds_loader = torch.utils.data.DataLoader(train_set, sampler=ShardSampler(len(train_set), ctx),
                                             **common)
    if not validation:
        return train_loader, test_loader, nds_loader
    val_loader = None if val_set is None else torch.utils.data.DataLoader(
        val_set, sampler=ShardSampler(len(val_set), ctx), **common)
    return train_loader, test_loader, nds_loader, val_loader


# --- One run ----------------------------------------------------------------------------------

def default_run_name(cfg):
    default, network = cfg['DEFAULT'], cfg['Network']
    mode = 'advtrain' if default['advtrain'] else 'cleantrain' if default['cleantrain'] else 'eval'
    return f"{network['dataset']}-{network['model']}-{mode}"


def run_experiment(cfg, out_dir, ctx, resume=False, workers=None, nds_out=None, warnings=(),
                   allow_config_change=False):
    """One run of a resolved config: (train) -> (record the NDS) -> (adversarial test).
    Model and checkpoints are checked before any data set is touched. ``nds_out``: where
    ``save_target`` writes the NDS (default ``<out_dir>/nds.pt``). ``resume`` with a config that
    differs from the one saved in last.pth is refused (naming the keys) unless
    ``allow_config_change``; the change is then applied and recorded in results.json.
    Returns the results dict (on rank 0; the other ranks' copy has no robustness table)."""
    default = cfg['DEFAULT']
    training = default['cleantrain'] or default['advtrain']
    seed_everything(default['seed'])  # the same initial weights on every rank

    model_without_ddp = build_model(cfg)
    # One --out, one run: rank 0 creates it, checks it (a directory, writable, room for one
    # checkpoint) and locks it before anything is computed; released however the run ends.
    run_dir = open_run_directory(out_dir, ctx,
                                 checkpoint_bytes(model_without_ddp) if training else 0)
    try:
        results = _run_in_directory(cfg, out_dir, ctx, model_without_ddp, resume, workers, nds_out,
                                    warnings, allow_config_change)
    finally:
        run_dir.release()
    # Rank 0 writes the run's files (the NDS among them) last: no rank may go on to what reads
    # them (protocol.py's next stage loads the NDS) before they exist.
    wait_for_all_ranks(ctx)
    return results


def _run_in_directory(cfg, out_dir, ctx, model_without_ddp, resume, workers, nds_out, warnings,
                      allow_config_change):
    """run_experiment, once ``out_dir`` is locked."""
    default, network = cfg['DEFAULT'], cfg['Network']
    training = default['cleantrain'] or default['advtrain']
    last_path = os.path.join(out_dir, 'last.pth')
    resume_state, changes, notes = None, {}, []
    nds_before = nds_buffers(model_without_ddp)
    weights_from = last_path if resume else default['ckpt']
    if resume:
        if not os.path.isfile(last_path):
            raise CheckpointError(f"--resume: '{last_path}' does not exist (nothing to resume)")
        resume_state = check_resumable(load_checkpoint(last_path), last_path)
        if isinstance(resume_state.get('config'), dict):
            changes = config_changes(resume_state['config'], cfg)
        refused = {k: v for k, v in changes.items() if k not in RESUME_FREE_KEYS}
        if refused and not allow_config_change:
            shown = '; '.join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in refused.items())
            raise ConfigError(f"--resume: the config differs from the one {last_path} was trained "
                              f"with ({shown[:400]}); pass --allow-config-change to apply the "
                              f"change from the next epoch, or resume without it")
        load_model_weights(model_without_ddp, resume_state, last_path, cfg)
    elif default['ckpt'] is not None:
        load_model_weights(model_without_ddp, load_checkpoint(default['ckpt']), default['ckpt'],
                           cfg)
    if weights_from is not None:
        note = nds_source_note(cfg, nds_before, model_without_ddp, weights_from)
        if note is not None:
            notes.append(note)
            # The NDS is the checkpoint's: config.resolve's random-NDS warning does not apply.
            warnings = [w for w in warnings if RANDOM_NDS_WARNING not in w]
    if training and not resume and os.path.isfile(last_path):
        raise ConfigError(f"--out {out_dir} already holds a run (last.pth): pass --resume to "
                          f"continue it, or choose another --out")

    model_without_ddp.to(ctx.device)
    model = model_without_ddp
    if training and ctx.distributed:
        if ctx.device.type == 'cuda' and network['is_bn']:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model_without_ddp)
            model_without_ddp = model
        model = DistributedDataParallel(
            model_without_ddp, device_ids=[ctx.local_rank] if ctx.device.type == 'cuda' else None,
            **NO_BUFFER_SYNC_PER_STEP)

    # The data first: a run without its data set fails before it writes anything in --out.
    train_loader, test_loader, nds_loader, val_loader = build_loaders(cfg, ctx, workers, True)
    outputs = RunOutputs(out_dir, ctx, cfg,
                         results=resume_state.get('results') if resume_state else None,
                         resume=resume)
    for warning in warnings:
        outputs.log(f"warning: {warning}")
    for note in notes:
        outputs.log(note)
    if changes:
        outputs.log(f"warning: resuming with a changed config: "
                    f"{', '.join(f'{k}={new!r} (was {old!r})' for k, (old, new) in changes.items())}")
        outputs.results['config'] = cfg
        outputs.results.setdefault('config_changes', []).append(
            {'resumed_after_epoch': resume_state['epoch'],
             'changes': {key: {'from': old, 'to': new} for key, (old, new) in changes.items()}})
    outputs.log(f"{network['dataset']}: {len(train_loader.dataset)} train / "
                f"{len(test_loader.dataset)} test samples, {ctx.world_size} process(es) on "
                f"{ctx.device}, {network['model']} network -> {out_dir}")
    # Dropout masks and random attack starts differ between ranks, as in the published code.
    seed_everything(default['seed'] + 1000 * ctx.rank)

    if training:
        train(model, model_without_ddp, train_loader, test_loader, cfg, ctx, outputs, resume_state,
              val_loader)
    if network['save_target']:
        nds_path = nds_out or os.path.join(out_dir, 'nds.pt')  # the run's own output
        nds = record_nds(model_without_ddp, nds_loader, ctx, outputs.progress)
        outputs.save_nds(nds_path, nds)
        outputs.set_result('nds_file', nds_path)
    if default['advtest']:
        outputs.log(f"adversarial test ({'clamped' if cfg['ATTACK']['clamp'] else 'unclamped'})")
        rows = adversarial_test(model_without_ddp, test_loader, Normalization.of(network),
                                attack_bounds(cfg), attack_strengths(cfg), ctx, outputs.progress,
                                outputs.log)
        outputs.add_robustness(rows)
    outputs.set_result('finished', True)
    outputs.close()
    return outputs.results


def train(model, model_without_ddp, train_loader, test_loader, cfg, ctx, outputs, resume_state,
          val_loader=None):
    """The training loop of SPEC §7; leaves the best (by clean test accuracy) weights in the model,
    as the published workflow evaluates best.pth. With ``val_loader`` (``DEFAULT.select:
    robust``) "best" is the best PGD accuracy on it instead (training/adversarial.py)."""
    default, network = cfg['DEFAULT'], cfg['Network']
    optimizer = build_optimizer(model, network['lr'])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=network['T_max'])
    adversary = None
    if default['advtrain']:
        adversary = build_adversary(cfg)
        outputs.log(adversary.describe(cfg))
    start_epoch, best = 0, {'epoch': None, 'test_acc': -1.0}
    if val_loader is not None:
        best['val_pgd_acc'] = -1.0
        outputs.set_result('selection', {
            'metric': 'val_pgd_acc', 'attack': 'pgd', 'eps': cfg['ATTACK']['train'][0],
            'val_samples': len(val_loader.dataset),
            'what': 'published PGD-7 accuracy at ATTACK.train[0] on training images held out '
                    'of training (DEFAULT.val_samples, split by DEFAULT.seed)'})
    best_state = None
    if resume_state is not None:
        optimizer.load_state_dict(resume_state['optimizer'])
        scheduler.load_state_dict(resume_state['scheduler'])
        # The saved states carry the saved lr and T_max; after a change accepted with
        # --allow-config-change the config's win (untouched otherwise: bit-exact resume).
        saved = (resume_state.get('config') or {}).get('Network') or {}
        if saved and (saved.get('lr'), saved.get('T_max')) != (network['lr'], network['T_max']):
            apply_resumed_hyperparameters(optimizer, scheduler, network)
        start_epoch = resume_state['epoch'] + 1
        best = dict(resume_state['best'])
        best_path = os.path.join(outputs.out_dir, 'best.pth')
        if os.path.isfile(best_path):
            best_state = load_checkpoint(best_path)['net']
        saved_world_size = len(resume_state['rng'])
        if saved_world_size == ctx.world_size:
            set_rng_states(resume_state['rng'][ctx.rank])
        else:
            # No saved stream for this rank layout: derive each rank's from (seed, epoch, rank).
            # The DistributedSampler also deals the samples to ranks differently, so the run
            # goes on correctly but not as the uninterrupted run would have (README).
            seed_everything(rederived_rng_seed(default['seed'], start_epoch, ctx.rank))
            outputs.log(f"warning: resuming a {saved_world_size}-process run on "
                        f"{ctx.world_size}: per-process RNG streams re-derived from the seed, "
                        f"epoch and rank; the sample order and the global batch change")
        outputs.log(f"resumed after epoch {resume_state['epoch']}")

    # NaN/Inf in the loss, gradient norm or weights stops the run (naming epoch and step)
    # before any checkpoint holds them; a run at chance with an exploding loss is warned about.
    guard = TrainingGuard(model_without_ddp, ctx, network['n_class'],
                          hint=f"Network.lr is {network['lr']:g}: try a smaller one")
    for epoch in range(start_epoch, network['epochs']):
        train_loader.sampler.set_epoch(epoch)
        metrics = train_one_epoch(model, model_without_ddp, train_loader, optimizer, ctx,
                                  outputs.progress, epoch,
                                  None if adversary is None else adversary.at_epoch(epoch), guard)
        warning = guard.end_epoch(metrics)
        if warning:
            outputs.log(f"warning: {warning}")
        scheduler.step()
        broadcast_buffers(ctx, model_without_ddp)
        with SpikeMonitor(model_without_ddp) as monitor:  # firing rates of the clean test pass
            test_acc, n = evaluate(model_without_ddp, test_loader, ctx, outputs.progress)
        spikes = monitor.stats(ctx)
        for warning in diagnose(spikes, f"epoch {epoch}, clean test"):
            outputs.log(f"warning: {warning}")
        metrics = {'epoch': epoch, **metrics, 'test_acc': test_acc, 'test_samples': n,
                   'lr': optimizer.param_groups[0]['lr'], 'firing_rate': spikes['firing_rate'],
                   'predictions': spikes['predictions']}
        if val_loader is None:
            is_best = test_acc > best['test_acc']
            if is_best:
                best = {'epoch': epoch, 'test_acc': test_acc}
        else:
            metrics['val_pgd_acc'], metrics['val_samples'] = evaluate(
                model_without_ddp, val_loader, ctx, outputs.progress, attack='pgd',
                eps=selection_eps(cfg), bounds=attack_bounds(cfg), desc='validation pgd')
            is_best = metrics['val_pgd_acc'] > best['val_pgd_acc']
            if is_best:
                best = {'epoch': epoch, 'test_acc': test_acc, 'val_pgd_acc': metrics['val_pgd_acc']}
            best_state = {k: v.detach().cpu().clone() for k, v in model_without_ddp.state_dict().items()}
        outputs.add_epoch(metrics)
        outputs.set_result('best', best)
        # Each rank's RNG state, so a resumed run continues every stream where it stopped.
        rngs = all_gather_object(ctx, rng_states())
        extra = dict(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                     rng=rngs, config=cfg, best=best, results=outputs.results)
        if is_best:
            outputs.save_checkpoint('best.pth', model_without_ddp, epoch, **extra)
        if epoch > 0 and epoch % SAVE_EVERY_EPOCHS == 0:
            outputs.save_checkpoint(f"epoch_{epoch}.pth", model_without_ddp, epoch, **extra)
        outputs.save_checkpoint('last.pth', model_without_ddp, epoch, **extra)  # last: resume point

    if best_state is not None:
        model_without_ddp.load_state_dict(best_state)
        by = '' if val_loader is None else \
            f", validation PGD accuracy {100 * best['val_pgd_acc']:.2f}% (selected by it)"
        outputs.log(f"using best.pth: epoch {best['epoch']}, clean test accuracy "
                    f"{100 * best['test_acc']:.2f}%{by}")
        outputs.set_result('evaluated', f"best.pth (epoch {best['epoch']})")
