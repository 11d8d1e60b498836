"""The training step and epoch, the clean and adversarial evaluations, and the NDS recording pass.

Metrics are accumulated on the device (no host synchronisation per step) and summed over all
processes at the end, so every sample counts exactly once on any number of ranks.
"""
import time

import torch

from attack import ATTACKS, attack_label, attacks_for
from training.diagnostics import SpikeMonitor, diagnose
from runtime.distributed import all_reduce_sum
from runtime.formatting import eps_text
from layers import compute_loss, predict, time_expand, use_gradient_path

GRAD_CLIP_NORM = 1.0
ADAM_BETAS = (0.9, 0.999)


def build_optimizer(model, lr):
    """The published optimiser: AdamW (default weight decay) with betas (0.9, 0.999)."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=ADAM_BETAS)


def train_step(model, x, labels, optimizer, network=None, dropout=True, objective=None):
    """One optimiser step of SPEC §7: forward, loss, backward, gradient-norm clipping at 1, AdamW
    step, weight clipping. ``model`` may be the DDP wrapper of ``network`` (the unwrapped module;
    default: ``model`` itself). The caller sets train/eval mode. ``dropout=False`` runs the net
    with ``is_train=False`` (the golden recordings did). The gradient follows
    ``Network.train_gradient`` (``network.settings``: the published backward, or exact BPTT).
    Returns ``(out, loss, grad_norm)`` (the norm before clipping, as clip_grad_norm_ returns it;
    a device tensor, not synchronised). ``objective(model, x, labels, dropout) -> (out, loss)``
    replaces the forward and the network's loss (TRADES, training/adversarial.py)."""
    network = model if network is None else network
    # (the rule is chosen when the layers run forward; their backward follows it later)
    with use_gradient_path(network, network.settings.train_gradient):
        if objective is None:
            out, _ = model(x, dropout)
            loss = compute_loss(out, labels, network.settings)
        else:
            out, loss = objective(model, x, labels, dropout)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
    optimizer.step()
    network.weight_clipper()
    return out, loss, grad_norm


def _to_device(images, labels, ctx, dtype):
    return (images.to(ctx.device, dtype=dtype, non_blocking=True),
            labels.to(ctx.device, non_blocking=True))


def craft_training_examples(adversary, network, x, labels):
    """``(x_adv, objective or None)``: an ``Adversary`` (training/adversarial.py) crafts its own;
    the plain tuple ``(attack, eps, bounds, gradient path)`` runs the attack through the path."""
    if hasattr(adversary, 'craft'):
        return adversary.craft(network, x, labels)
    attack, eps, bounds, gradient = adversary
    with use_gradient_path(network, gradient):
        return attack(network, x, labels, eps, bounds), None


def train_one_epoch(model, model_without_ddp, loader, optimizer, ctx, progress, epoch,
                    adversary=None, guard=None):
    """One pass over ``loader``. ``adversary``: ``(attack, eps, bounds, gradient path)`` (model
    units, see attack.py; the path as layers.parse_gradient_path gives it, None = published) for
    adversarial training -- examples are crafted on the unwrapped module in train
    mode (BatchNorm batch statistics), so input gradients trigger no DDP reduction. ``guard``:
    an ``Adversary`` of training/adversarial.py (which may also bring its own loss: TRADES).
    ``guard``: a guards.TrainingGuard that sees every step's loss and gradient norm (stops on NaN/Inf)."""
    settings = model_without_ddp.settings
    dtype = next(model_without_ddp.parameters()).dtype
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    seen = 0
    start = time.perf_counter()
    bar = progress(loader, desc=f"epoch {epoch} train", total=len(loader))
    if guard is not None:
        guard.start_epoch(epoch, len(loader))
    for step, (images, labels) in enumerate(bar):
        images, labels = _to_device(images, labels, ctx, dtype)
        x = time_expand(images, settings.n_steps)
        objective = None
        if adversary is not None:
            x, objective = craft_training_examples(adversary, model_without_ddp, x, labels)
        out, loss, grad_norm = train_step(model, x, labels, optimizer, model_without_ddp,
                                          objective=objective)
        if guard is not None:
            guard.after_step(step, loss, grad_norm)
        loss_sum += loss.detach() * labels.shape[0]
        correct += (predict(out.detach()) == labels).sum()
        seen += labels.shape[0]
        if hasattr(bar, 'set_postfix') and step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    totals = all_reduce_sum(ctx, [loss_sum.item(), correct.item(), seen])
    n = int(totals[2])
    return {'train_loss': totals[0].item() / max(n, 1), 'train_acc': totals[1].item() / max(n, 1),
            'train_samples': n, 'train_time_s': time.perf_counter() - start}


def accuracy_under_attack(source, targets, loader, ctx, progress, attack=None, eps=0.0,
                          bounds=None, desc='test'):
    """Craft examples on ``source`` with ``attack`` (a name in ``attack.ATTACKS`` or an attack
    function; None = clean; ``eps`` and ``bounds`` in model units) and measure every model in
    ``targets`` on them: white-box when the target is the source, transfer otherwise. Models are
    unwrapped and put in eval mode. Returns ``([accuracy per target], n_samples)``, summed over
    all ranks."""
    attack = ATTACKS[attack] if isinstance(attack, str) else attack
    dtype = next(source.parameters()).dtype
    for model in (source, *targets):
        model.eval()
    correct = torch.zeros(len(targets), dtype=torch.int64, device=ctx.device)
    seen = 0
    for images, labels in progress(loader, desc=desc, total=len(loader), leave=False):
        images, labels = _to_device(images, labels, ctx, dtype)
        x = time_expand(images, source.settings.n_steps)
        if attack is not None:
            x = attack(source, x, labels, eps, bounds)
        with torch.no_grad():
            for index, model in enumerate(targets):
                out, _ = model(x, False)
                correct[index] += (predict(out) == labels).sum()
        seen += labels.shape[0]
    totals = all_reduce_sum(ctx, correct.tolist() + [seen])
    n = int(totals[-1])
    return [c.item() / max(n, 1) for c in totals[:-1]], n


def evaluate(model, loader, ctx, progress, attack=None, eps=0.0, bounds=None, desc='test'):
    """Accuracy of ``model`` on ``loader``, clean or under a white-box ``attack``:
    ``(accuracy, n_samples)`` over all ranks."""
    accuracies, n = accuracy_under_attack(model, [model], loader, ctx, progress, attack, eps,
                                          bounds, desc)
    return accuracies[0], n


def adversarial_test(model, loader, normalization, bounds, strengths, ctx, progress, log):
    """The published adversarial test: clean accuracy, then the attacks of usage 'test' (FGSM,
    R-FGSM, PGD and BIM) at every strength (pixel units; ``normalization`` converts them).
    Returns rows ``{'attack', 'eps', 'accuracy', 'n_samples', 'output_rate'}`` (eps in pixel
    units; ``output_rate``: the output layer's mean spikes per neuron per step on the evaluated
    inputs, None for a softmax read-out); the clean row also has every layer's ``firing_rate``
    and the ``predictions`` per class. A silent output layer or constant predictions are warned
    about (diagnostics.diagnose)."""
    with SpikeMonitor(model) as monitor:
        accuracy, n = evaluate(model, loader, ctx, progress, desc='clean')
    spikes = monitor.stats(ctx)
    rows = [{'attack': 'clean', 'eps': 0.0, 'accuracy': accuracy, 'n_samples': n,
             'output_rate': spikes['output_rate'], 'firing_rate': spikes['firing_rate'],
             'predictions': spikes['predictions']}]
    log(f"clean: {100 * accuracy:.2f}% ({n} samples)")
    for warning in diagnose(spikes, 'adversarial test, clean'):
        log(f"warning: {warning}")
    for eps in strengths:
        for name in attacks_for('test'):
            with SpikeMonitor(model) as monitor:
                accuracy, n = evaluate(model, loader, ctx, progress, attack=name,
                                       eps=normalization.to_model_units(eps), bounds=bounds,
                                       desc=f"{name} eps={eps_text(eps)}")
            rows.append({'attack': name, 'eps': eps, 'accuracy': accuracy, 'n_samples': n,
                         'output_rate': monitor.stats(ctx)['output_rate']})
            log(f"{attack_label(name)} eps={eps_text(eps)}: {100 * accuracy:.2f}% ({n} samples)")
    return rows


def record_nds(model, loader, ctx, progress):
    """The Neural Dynamic Signature: for every spiking layer, the mean over all samples (of every
    rank) of the pre-reset membrane potential ``u_t``, ``{name: [*out_shape, T]}``. The network must
    be built with ``save_target: True``."""
    dtype = next(model.parameters()).dtype
    model.eval()
    sums, seen = {}, 0
    with torch.no_grad():
        for images, labels in progress(loader, desc='NDS', total=len(loader), leave=False):
            images, _ = _to_device(images, labels, ctx, dtype)
            _, batch_means = model(time_expand(images, model.settings.n_steps), False)
            for name, mean in batch_means.items():
                total = mean.double() * images.shape[0]
                sums[name] = sums[name] + total if name in sums else total
            seen += images.shape[0]
    if not sums:
        raise RuntimeError("record_nds: the network returned no NDS (is Network.save_target true?)")
    names = list(sums)
    flat = torch.cat([sums[name].flatten().cpu() for name in names] + [torch.tensor([float(seen)])])
    flat = all_reduce_sum(ctx, flat)
    n = flat[-1]
    nds, offset = {}, 0
    for name in names:
        size = sums[name].numel()
        nds[name] = (flat[offset:offset + size] / n).view(sums[name].shape).float()
        offset += size
    return nds
