"""Guards of the training loop: stop a run whose numbers stop being finite before any checkpoint
holds them, warn about a run that learns nothing while its loss explodes, and the fault-injection
hook the crash/resume tests use.

The per-step checks stay on the device (no host synchronisation per step): a step whose loss or
gradient norm is not finite records its index in a device tensor, and the host looks at it every
``CHECK_EVERY`` steps (when the progress bar synchronises anyway) and at the end of the epoch,
before anything is saved. The error names the first bad step.
"""
import math
import os
import signal
from types import MappingProxyType

import torch
import torch.distributed as dist

from errors import UserError

CHECK_EVERY = 20
FAULT_KILL_ENV = 'HOSNN_FAULT_KILL_AT_STEP'  # tests: SIGKILL this process at global step k
_NONE_BAD = 2**62  # "no bad step yet" in the encoded first bad step (step * 4 + what)
_WHAT = MappingProxyType({1: 'the loss', 2: 'the gradient norm',
                          3: 'the loss and the gradient norm'})
# A run at chance accuracy whose epoch loss is this many times its first step's loss is lost.
EXPLODED_LOSS_RATIO = 4.0


class TrainingDiverged(UserError):
    """Training produced NaN/Inf (loss, gradient norm or weights); the usual cause is the learning
    rate, so it is the user's to fix."""


def first_nonfinite_parameter(model):
    """Name of the first parameter or floating buffer holding NaN/Inf, or None."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _all_reduce(ctx, tensor, op):
    """``tensor`` reduced over all ranks (every rank takes the same decision: a rank that
    stopped alone would leave the others waiting in the next collective)."""
    if ctx.distributed:
        tensor = tensor.to(ctx.device)
        dist.all_reduce(tensor, op=op)
    return tensor


def fault_kill_step():
    """The global step at which a test wants this process killed (``HOSNN_FAULT_KILL_AT_STEP``),
    read once when training starts; None normally."""
    value = os.environ.get(FAULT_KILL_ENV)
    return int(value) if value not in (None, '') else None


class TrainingGuard:
    """One per training run. ``start_epoch`` / ``after_step`` (every step) / ``end_epoch`` (after
    the epoch's last step, before anything is saved)."""

    def __init__(self, model_without_ddp, ctx, n_class, hint=''):
        self.model = model_without_ddp
        self.ctx = ctx
        self.n_class = n_class
        self.hint = hint
        self.kill_at_step = fault_kill_step()
        self.first_loss = None  # the run's first step loss (device tensor), the explosion baseline
        self.warned = False
        self.epoch, self.steps_per_epoch, self.last_step = 0, 0, -1
        self.first_bad = None

    def start_epoch(self, epoch, steps_per_epoch):
        self.epoch, self.steps_per_epoch, self.last_step = epoch, steps_per_epoch, -1
        self.first_bad = torch.full((), _NONE_BAD, dtype=torch.int64, device=self.ctx.device)

    def after_step(self, step, loss, grad_norm):
        """Record step ``step`` of the epoch: device ops only, a host check every CHECK_EVERY
        steps. ``grad_norm``: what clip_grad_norm_ returned."""
        loss = loss.detach()
        if self.first_loss is None:
            self.first_loss = loss.clone()
        what = (~torch.isfinite(loss)).long() + 2 * (~torch.isfinite(grad_norm)).long()
        encoded = torch.where(what > 0, step * 4 + what, _NONE_BAD)
        self.first_bad = torch.minimum(self.first_bad, encoded)
        self.last_step = step
        if (step + 1) % CHECK_EVERY == 0:
            self.check()
        if self.kill_at_step is not None and \
                self.epoch * self.steps_per_epoch + step == self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # a deterministic crash for the resume tests

    def check(self):
        """Raise TrainingDiverged if a step so far was non-finite (one host synchronisation)."""
        encoded = int(_all_reduce(self.ctx, self.first_bad.clone(), dist.ReduceOp.MIN))
        if encoded != _NONE_BAD:
            step, what = divmod(encoded, 4)
            self._fail(f"{_WHAT[what]} is not finite at epoch {self.epoch}, step {step}")

    def end_epoch(self, metrics):
        """Before any save: raise on a non-finite step or weight; return a warning line (or None)
        for a run at chance accuracy whose loss exploded."""
        self.check()
        local = first_nonfinite_parameter(self.model)
        flag = torch.tensor(0 if local is None else 1, dtype=torch.int64)
        if int(_all_reduce(self.ctx, flag, dist.ReduceOp.MAX)):
            self._fail(f"weight '{local or 'on another rank'}' is not finite at the end of epoch "
                       f"{self.epoch} (step {self.last_step}; the loss and gradient norm stayed finite)")
        return self._divergence_warning(metrics)

    def _fail(self, what):
        weight = first_nonfinite_parameter(self.model)
        extra = f"; weight '{weight}' is not finite either" if weight and weight not in what else ''
        raise TrainingDiverged(f"training diverged: {what}{extra}; no checkpoint of this epoch was "
                               f"written{'; ' + self.hint if self.hint else ''}")

    def _divergence_warning(self, metrics):
        """Nothing is non-finite, so training goes on, but a run that stays at chance while its
        loss grows several-fold is almost certainly lost (e.g. a learning rate of 1e6 drives
        theta_v to ~1e6 and the network silent). Warned once."""
        if self.warned or self.first_loss is None:
            return None
        first = float(self.first_loss)
        loss, accuracy = metrics['train_loss'], metrics['train_acc']
        at_chance = accuracy < 1.5 / self.n_class
        exploded = not math.isfinite(loss) or loss > EXPLODED_LOSS_RATIO * abs(first)
        if not (at_chance and exploded):
            return None
        self.warned = True
        largest = max(((name, float(t.detach().abs().max()))
                       for name, t in self.model.state_dict().items()
                       if t.is_floating_point() and t.numel()),
                      key=lambda item: item[1], default=None)
        detail = f"; largest weight '{largest[0]}' = {largest[1]:.3g}" if largest else ''
        return (f"epoch {self.epoch}: training accuracy {100 * accuracy:.1f}% is at chance "
                f"({self.n_class} classes) while the loss grew from {first:.4g} (first step) to "
                f"{loss:.4g}{detail}: the run is diverging{'; ' + self.hint if self.hint else ''}")
