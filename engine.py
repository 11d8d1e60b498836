"""One training epoch, the clean and adversarial evaluations, and the NDS recording pass.

Metrics are accumulated on the device (no host synchronisation per step) and summed over all
processes at the end, so every sample counts exactly once on any number of ranks.
"""
import time

import torch

from attack import ATTACKS
from distributed import all_reduce_sum
from layers import compute_loss, predict

ADVERSARIAL_TEST_ATTACKS = ('fgsm', 'rfgsm', 'pgd', 'bim')  # the published test, in its order
TRAIN_ATTACKS = {'fgm': 'fgsm', 'pgd': 'pgd'}  # ATTACK.ft_method -> attack
GRAD_CLIP_NORM = 1.0


def time_expand(images, n_steps):
    """Direct encoding: the image ``[B, C, H, W]`` on every time step -> ``[B, C, H, W, T]``."""
    return images.unsqueeze(-1).expand(*images.shape, n_steps).contiguous()


def _to_device(images, labels, ctx, dtype):
    return (images.to(ctx.device, dtype=dtype, non_blocking=True),
            labels.to(ctx.device, non_blocking=True))


def train_one_epoch(model, model_without_ddp, loader, optimizer, network_cfg, ctx, progress,
                    epoch, adversary=None):
    """One pass over ``loader``. ``adversary``: ``(attack_fn, eps_scaled, clamp)`` for adversarial
    training -- examples are crafted on the unwrapped module in train mode (BatchNorm batch
    statistics), so input gradients trigger no DDP reduction."""
    settings = model_without_ddp.settings
    dtype = next(model_without_ddp.parameters()).dtype
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    seen = 0
    start = time.perf_counter()
    bar = progress(loader, desc=f"epoch {epoch} train", total=len(loader))
    for step, (images, labels) in enumerate(bar):
        images, labels = _to_device(images, labels, ctx, dtype)
        x = time_expand(images, settings.n_steps)
        if adversary is not None:
            attack_fn, eps, clamp = adversary
            x = attack_fn(model_without_ddp, x, labels, eps, network_cfg, clamp)
        out, _ = model(x, True)
        loss = compute_loss(out, labels, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
        optimizer.step()
        model_without_ddp.weight_clipper()
        loss_sum += loss.detach() * labels.shape[0]
        correct += (predict(out.detach()) == labels).sum()
        seen += labels.shape[0]
        if hasattr(bar, 'set_postfix') and step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    totals = all_reduce_sum(ctx, [loss_sum.item(), correct.item(), seen])
    n = int(totals[2])
    return {'train_loss': totals[0].item() / max(n, 1), 'train_acc': totals[1].item() / max(n, 1),
            'train_samples': n, 'train_time_s': time.perf_counter() - start}


def accuracy_under_attack(source, targets, loader, network_cfg, ctx, progress, attack=None,
                          eps=0.0, clamp=False, desc='test'):
    """Craft examples on ``source`` with ``attack`` (a name in ``attack.ATTACKS``; None = clean;
    ``eps`` already divided by the std) and measure every model in ``targets`` on them: white-box
    when the target is the source, transfer otherwise. Models are unwrapped and put in eval mode.
    Returns ``([accuracy per target], n_samples)``, summed over all ranks."""
    dtype = next(source.parameters()).dtype
    for model in (source, *targets):
        model.eval()
    correct = torch.zeros(len(targets), dtype=torch.int64, device=ctx.device)
    seen = 0
    for images, labels in progress(loader, desc=desc, total=len(loader), leave=False):
        images, labels = _to_device(images, labels, ctx, dtype)
        x = time_expand(images, source.settings.n_steps)
        if attack is not None:
            x = ATTACKS[attack](source, x, labels, eps, network_cfg, clamp)
        with torch.no_grad():
            for index, model in enumerate(targets):
                out, _ = model(x, False)
                correct[index] += (predict(out) == labels).sum()
        seen += labels.shape[0]
    totals = all_reduce_sum(ctx, correct.tolist() + [seen])
    n = int(totals[-1])
    return [c.item() / max(n, 1) for c in totals[:-1]], n


def evaluate(model, loader, network_cfg, ctx, progress, attack=None, eps=0.0, clamp=False,
             desc='test'):
    """Accuracy of ``model`` on ``loader``, clean or under a white-box ``attack``:
    ``(accuracy, n_samples)`` over all ranks."""
    accuracies, n = accuracy_under_attack(model, [model], loader, network_cfg, ctx, progress, attack,
                                          eps, clamp, desc)
    return accuracies[0], n


def adversarial_test(model, loader, network_cfg, attack_cfg, strengths, ctx, progress, log):
    """The published adversarial test: clean accuracy, then FGSM, R-FGSM, PGD and BIM at every
    strength. Returns rows ``{'attack', 'eps', 'accuracy', 'n_samples'}`` (eps in pixel units)."""
    std, clamp = network_cfg['std'], attack_cfg['clamp']
    accuracy, n = evaluate(model, loader, network_cfg, ctx, progress, desc='clean')
    rows = [{'attack': 'clean', 'eps': 0.0, 'accuracy': accuracy, 'n_samples': n}]
    log(f"clean: {100 * accuracy:.2f}% ({n} samples)")
    for eps in strengths:
        for name in ADVERSARIAL_TEST_ATTACKS:
            accuracy, n = evaluate(model, loader, network_cfg, ctx, progress, attack=name,
                                   eps=eps / std, clamp=clamp, desc=f"{name} eps={eps:.4f}")
            rows.append({'attack': name, 'eps': eps, 'accuracy': accuracy, 'n_samples': n})
            log(f"{name} eps={eps:.4f}: {100 * accuracy:.2f}% ({n} samples)")
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
