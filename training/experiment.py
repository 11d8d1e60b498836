"""One experiment: the model of a config (and its checkpoint), the data loaders, and one run of
main.py -- (train) -> (record the NDS) -> (adversarial test) -- in a locked run directory.

    build_model(cfg, ckpt=None, device=None)   the network of a config, weights from a checkpoint
    build_loaders(cfg, ctx, workers)           train (DistributedSampler), test and NDS loaders (and
                                               the held-out validation split of DEFAULT.select: robust)
    run_experiment(cfg, out_dir, ctx, ...)     one run; protocol.py runs one per stage
    train(...)                                 the training loop of SPEC §7

The command lines are in training/cli.py, --resume in training/resume.py.
"""
import inspect
import os

import torch
from torch.nn.parallel import DistributedDataParallel

from attack import Normalization, attack_bounds
from config import RANDOM_NDS, attack_strengths, input_shape
from datasets import build_datasets
from errors import without_warning
from layers import ANN, build_network
from runtime.checkpoint import CheckpointError, load_checkpoint, load_weights
from runtime.distributed import (ShardSampler, all_gather_object, broadcast_buffers,
                                 wait_for_all_ranks)
from runtime.outputs import RunOutputs
from runtime.rng import rng_states, seed_everything
from runtime.rundir import checkpoint_bytes, open_run_directory
from training.adversarial import build_adversary, split_training_set, validation_pgd_accuracy
from training.diagnostics import SpikeMonitor, diagnose
from training.engine import adversarial_test, build_optimizer, evaluate, record_nds, train_one_epoch
from training.guards import TrainingGuard
from training.resume import (last_checkpoint, load_resume_point, record_config_changes,
                             refuse_overwriting, restore_training_state)

SAVE_EVERY_EPOCHS = 100


# --- Model and data -------------------------------------------------------------------------------

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


# --- One run --------------------------------------------------------------------------------------

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
    resume_state, changes, nds_note = load_starting_weights(cfg, out_dir, model_without_ddp,
                                                            resume, allow_config_change)
    if nds_note is not None:
        # The NDS is the checkpoint's: config.resolve's random-NDS warning does not apply.
        warnings = without_warning(warnings, RANDOM_NDS)
    if training and not resume:
        refuse_overwriting(out_dir)
    model, model_without_ddp = place_model(model_without_ddp, cfg, ctx, training)

    # The data first: a run without its data set fails before it writes anything in --out.
    train_loader, test_loader, nds_loader, val_loader = build_loaders(cfg, ctx, workers, True)
    outputs = RunOutputs(out_dir, ctx, cfg,
                         results=resume_state.get('results') if resume_state else None,
                         resume=resume)
    for warning in warnings:
        outputs.log(f"warning: {warning}")
    if nds_note is not None:
        outputs.log(nds_note)
    record_config_changes(outputs, cfg, resume_state, changes)
    outputs.log(f"{network['dataset']}: {len(train_loader.dataset)} train / "
                f"{len(test_loader.dataset)} test samples, {ctx.world_size} process(es) on "
                f"{ctx.device}, {network['model']} network -> {out_dir}")
    if training and network.get('train_gradient', 'published') != 'published':
        outputs.log(f"training step through the {network['train_gradient']} gradient "
                    f"(Network.train_gradient)")
    # Dropout masks and random attack starts differ between ranks, as in the published code.
    seed_everything(default['seed'] + 1000 * ctx.rank)

    if training:
        train(model, model_without_ddp, train_loader, test_loader, cfg, ctx, outputs, resume_state,
              val_loader)
    if network['save_target']:
        save_nds(model_without_ddp, nds_loader, ctx, outputs,
                 nds_out or os.path.join(out_dir, 'nds.pt'))  # default: the run's own output
    if default['advtest']:
        run_adversarial_test(model_without_ddp, test_loader, cfg, ctx, outputs)
    outputs.set_result('finished', True)
    outputs.close()
    return outputs.results


def load_starting_weights(cfg, out_dir, model_without_ddp, resume, allow_config_change):
    """Load the weights a run starts from: ``<out_dir>/last.pth`` on ``resume``, else
    ``DEFAULT.ckpt`` (else the initial ones stay). Returns ``(resume checkpoint or None, config
    changes, the line that says which NDS the TA-LIF layers use, or None)``."""
    ckpt = cfg['DEFAULT']['ckpt']
    nds_before = nds_buffers(model_without_ddp)
    resume_state, changes = None, {}
    if resume:
        resume_state, changes = load_resume_point(out_dir, cfg, allow_config_change)
        weights_from, checkpoint = last_checkpoint(out_dir), resume_state
    elif ckpt is not None:
        weights_from, checkpoint = ckpt, load_checkpoint(ckpt)
    else:
        return None, {}, None
    load_model_weights(model_without_ddp, checkpoint, weights_from, cfg)
    return resume_state, changes, nds_source_note(cfg, nds_before, model_without_ddp, weights_from)


def place_model(model_without_ddp, cfg, ctx, training):
    """``(model, model_without_ddp)`` on the run's device: the model to train is DDP-wrapped
    under a process group (with SyncBatchNorm for BN networks on GPUs); attacks, evaluation and
    checkpoints use ``model_without_ddp``."""
    model_without_ddp.to(ctx.device)
    if not (training and ctx.distributed):
        return model_without_ddp, model_without_ddp
    if ctx.device.type == 'cuda' and cfg['Network']['is_bn']:
        model_without_ddp = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model_without_ddp)
    # The buffers (NDS, BN running statistics) are not re-sent from rank 0 before every forward:
    # the NDS never changes and the BN statistics are broadcast before each evaluation and save
    # (distributed.broadcast_buffers). The keyword was renamed in recent torch releases.
    ddp_keywords = inspect.signature(DistributedDataParallel).parameters
    no_buffer_sync = ('forward_sync_buffers' if 'forward_sync_buffers' in ddp_keywords
                      else 'broadcast_buffers')
    model = DistributedDataParallel(
        model_without_ddp, device_ids=[ctx.local_rank] if ctx.device.type == 'cuda' else None,
        **{no_buffer_sync: False})
    return model, model_without_ddp


def save_nds(model_without_ddp, nds_loader, ctx, outputs, path):
    """Record the NDS over the training set (Network.save_target) and write it to ``path``."""
    nds = record_nds(model_without_ddp, nds_loader, ctx, outputs.progress)
    outputs.save_nds(path, nds)
    outputs.set_result('nds_file', path)


def run_adversarial_test(model_without_ddp, test_loader, cfg, ctx, outputs):
    """The published robustness table (clean, FGSM, R-FGSM, PGD, BIM at every ATTACK.strength)."""
    outputs.log(f"adversarial test ({'clamped' if cfg['ATTACK']['clamp'] else 'unclamped'})")
    rows = adversarial_test(model_without_ddp, test_loader, Normalization.of(cfg['Network']),
                            attack_bounds(cfg), attack_strengths(cfg), ctx, outputs.progress,
                            outputs.log)
    outputs.add_robustness(rows)


# --- Training -------------------------------------------------------------------------------------

def train(model, model_without_ddp, train_loader, test_loader, cfg, ctx, outputs, resume_state,
          val_loader=None):
    """The training loop of SPEC §7; leaves the best (by clean test accuracy) weights in the model,
    as the published workflow evaluates best.pth. With ``val_loader`` (``DEFAULT.select:
    robust``) "best" is the best PGD accuracy on it instead (training/adversarial.py)."""
    network = cfg['Network']
    optimizer = build_optimizer(model, network['lr'])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=network['T_max'])
    adversary = None
    if cfg['DEFAULT']['advtrain']:
        adversary = build_adversary(cfg)
        outputs.log(adversary.describe(cfg))
    start_epoch, best, best_state = 0, {'epoch': None, 'test_acc': -1.0}, None
    if val_loader is not None:
        best['val_pgd_acc'] = -1.0
        outputs.set_result('selection', {
            'metric': 'val_pgd_acc', 'attack': 'pgd', 'eps': cfg['ATTACK']['train'][0],
            'val_samples': len(val_loader.dataset),
            'gradient': cfg['ATTACK']['ft_gradient'],
            'what': 'PGD-7 accuracy at ATTACK.train[0], crafted through ATTACK.ft_gradient, on '
                    'training images held out of training (DEFAULT.val_samples, split by '
                    'DEFAULT.seed)'})
    if resume_state is not None:
        start_epoch, best, best_state = restore_training_state(resume_state, optimizer, scheduler,
                                                               cfg, ctx, outputs)
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
        test_acc, n, spikes = test_epoch(model_without_ddp, test_loader, ctx, outputs, epoch)
        metrics = {'epoch': epoch, **metrics, 'test_acc': test_acc, 'test_samples': n,
                   'lr': optimizer.param_groups[0]['lr'], 'firing_rate': spikes['firing_rate'],
                   'predictions': spikes['predictions']}
        if val_loader is not None:
            metrics['val_pgd_acc'], metrics['val_samples'] = validation_pgd_accuracy(
                model_without_ddp, val_loader, cfg, ctx, outputs.progress)
        is_best = (test_acc > best['test_acc'] if val_loader is None
                   else metrics['val_pgd_acc'] > best['val_pgd_acc'])
        if is_best:
            best = {'epoch': epoch, 'test_acc': test_acc}
            if val_loader is not None:
                best['val_pgd_acc'] = metrics['val_pgd_acc']
            best_state = {k: v.detach().cpu().clone() for k, v in model_without_ddp.state_dict().items()}
        outputs.add_epoch(metrics)
        outputs.set_result('best', best)
        save_epoch_checkpoints(model_without_ddp, optimizer, scheduler, cfg, ctx, outputs, epoch,
                               best, is_best)
    if best_state is not None:
        model_without_ddp.load_state_dict(best_state)
        by = '' if val_loader is None else \
            f", validation PGD accuracy {100 * best['val_pgd_acc']:.2f}% (selected by it)"
        outputs.log(f"using best.pth: epoch {best['epoch']}, clean test accuracy "
                    f"{100 * best['test_acc']:.2f}%{by}")
        outputs.set_result('evaluated', f"best.pth (epoch {best['epoch']})")


def test_epoch(model_without_ddp, test_loader, ctx, outputs, epoch):
    """The clean test after an epoch: ``(accuracy, samples, spike statistics of the pass)``; a
    silent output layer or constant predictions are warned about."""
    with SpikeMonitor(model_without_ddp) as monitor:
        test_acc, n = evaluate(model_without_ddp, test_loader, ctx, outputs.progress)
    spikes = monitor.stats(ctx)
    for warning in diagnose(spikes, f"epoch {epoch}, clean test"):
        outputs.log(f"warning: {warning}")
    return test_acc, n, spikes


def save_epoch_checkpoints(model_without_ddp, optimizer, scheduler, cfg, ctx, outputs, epoch, best,
                           is_best):
    """best.pth (a new best), epoch_<N>.pth (every SAVE_EVERY_EPOCHS) and last.pth, each with
    what --resume needs: optimiser, scheduler, every rank's RNG states, config, best, results."""
    # Each rank's RNG state, so a resumed run continues every stream where it stopped.
    rngs = all_gather_object(ctx, rng_states())
    extra = dict(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                 rng=rngs, config=cfg, best=best, results=outputs.results)
    if is_best:
        outputs.save_checkpoint('best.pth', model_without_ddp, epoch, **extra)
    if epoch > 0 and epoch % SAVE_EVERY_EPOCHS == 0:
        outputs.save_checkpoint(f"epoch_{epoch}.pth", model_without_ddp, epoch, **extra)
    outputs.save_checkpoint('last.pth', model_without_ddp, epoch, **extra)  # last: resume point
