"""APGD (Croce & Hein 2020, L-inf) that stops working on an image once it is fooled.

The algorithm and its constants are torchattacks' ``APGD`` (3.5.1, itself a port of AutoAttack's
``apgd-ce`` / ``apgd-dlr``): step size 2 eps, momentum 0.75, the checkpoints ``p_j`` at which the
step is halved (and the iterate reset to the best point) where the loss oscillated or stopped
improving, restarts on the images not yet fooled. With ``early_stop=False`` it returns what
torchattacks returns, bit for bit (``tests/test_apgd.py`` checks it).

Why our own: torchattacks runs every iteration on every image of the batch, including the ones
an earlier iteration already fooled. On a spiking network each of those iterations is a forward
and an exact BPTT backward through T time steps: the first APGD row of the full suite fools up
to half of the images it attacks and kept paying for them for the rest of its 100 steps (on a
robust model most of them fall late, so the saving there is small: README, "Time"). Here a fooled image keeps the first iterate that fooled it (verified
again by the suite) and leaves the batch; the others go on exactly as before, since every
quantity of APGD (step size, checkpoints' conditions, best point) is per image.
"""
import numpy as np
import torch

from robustness.losses import LOSSES

APGD_LOSSES = ('ce', 'dlr')


class Apgd:
    """``Apgd(model, eps, steps, restarts, loss, seed)(images, labels)`` -> adversarial images.
    ``model`` maps images in ``[0, 1]`` to class scores; ``eps`` is in those units."""

    def __init__(self, model, eps, steps=100, restarts=1, loss='ce', seed=0, rho=0.75,
                 early_stop=True):
        if loss not in APGD_LOSSES:
            raise ValueError(f"APGD loss {loss!r}: choose one of {', '.join(APGD_LOSSES)}")
        self.model, self.eps, self.steps, self.restarts = model, eps, steps, restarts
        self.loss_fn = LOSSES[loss]  # the suite's CE and DLR: torchattacks' values, bit for bit
        self.seed, self.rho, self.early_stop = seed, rho, early_stop

    def __call__(self, images, labels):
        x, y = images.clone().detach(), labels.clone().detach()
        adv = x.clone()
        with torch.no_grad():
            robust = self.model(x).max(1)[1] == y
        torch.random.manual_seed(self.seed)
        if x.device.type == 'cuda':
            torch.cuda.random.manual_seed(self.seed)
        for _ in range(self.restarts):
            todo = robust.nonzero()[:, 0]
            if len(todo) == 0:
                break
            fooled, x_fooling = self._single_run(x[todo], y[todo])
            robust[todo[fooled]] = False
            adv[todo[fooled]] = x_fooling[fooled]
        return adv

    def _scores_and_grad(self, x_adv, y, active):
        """Loss per image and its input gradient, computed on the ``active`` images only."""
        loss = torch.zeros(len(x_adv), dtype=x_adv.dtype, device=x_adv.device)
        grad = torch.zeros_like(x_adv)
        pred = torch.zeros(len(x_adv), dtype=torch.bool, device=x_adv.device)
        index = active.nonzero()[:, 0]
        if len(index) > 0:
            x_active = x_adv[index].clone().requires_grad_()
            with torch.enable_grad():
                logits = self.model(x_active)
                loss_active = self.loss_fn(logits, y[index])
            grad[index] = torch.autograd.grad(loss_active.sum(), [x_active])[0].detach()
            loss[index] = loss_active.detach()
            pred[index] = logits.detach().max(1)[1] == y[index]
        return loss, grad, pred

    def _single_run(self, x, y):
        """One APGD run: ``(fooled [N] bool, an input that fooled each fooled image)``."""
        steps, n = self.steps, len(x)
        steps_2, steps_min, size_decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), \
            max(int(0.03 * steps), 1)
        t = 2 * torch.rand(x.shape, dtype=x.dtype, device=x.device) - 1
        x_adv = x.detach() + self.eps * torch.ones([n, 1, 1, 1], dtype=x.dtype, device=x.device) * t / (
            t.reshape([n, -1]).abs().max(dim=1, keepdim=True)[0].reshape([-1, 1, 1, 1]))
        x_adv = x_adv.clamp(0.0, 1.0)
        x_best, x_best_adv = x_adv.clone(), x_adv.clone()
        loss_steps = torch.zeros([steps, n])
        active = torch.ones(n, dtype=torch.bool, device=x.device)

        loss_indiv, grad, pred = self._scores_and_grad(x_adv, y, active)
        grad_best = grad.clone()
        acc = pred
        active = self._retire(acc, active)
        loss_best = loss_indiv.detach().clone()

        step_size = torch.full([n, 1, 1, 1], 2.0 * self.eps, dtype=x.dtype, device=x.device)
        x_adv_old = x_adv.clone()
        k, counter3 = steps_2 + 0, 0
        u = np.arange(n)
        loss_best_last_check = loss_best.clone()
        reduced_last_check = np.zeros(loss_best.shape) == np.zeros(loss_best.shape)

        for i in range(steps):
            if not bool(active.any()):
                break
            with torch.no_grad():
                x_adv = x_adv.detach()
                grad2 = x_adv - x_adv_old
                x_adv_old = x_adv.clone()
                a = 0.75 if i > 0 else 1.0
                x_adv_1 = x_adv + step_size * torch.sign(grad)
                x_adv_1 = torch.clamp(torch.min(torch.max(x_adv_1, x - self.eps), x + self.eps),
                                      0.0, 1.0)
                x_adv_1 = torch.clamp(torch.min(torch.max(
                    x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), x - self.eps), x + self.eps),
                    0.0, 1.0)
                # a retired image stays where it was fooled
                x_adv = torch.where(active.view(-1, 1, 1, 1), x_adv_1 + 0.0, x_adv)

            loss_indiv, grad, pred = self._scores_and_grad(x_adv, y, active)
            pred = pred | ~active  # a retired image was fooled earlier: acc is already 0
            newly_fooled = active & ~pred
            acc = torch.min(acc, pred)
            x_best_adv[newly_fooled] = x_adv[newly_fooled] + 0.0
            if not self.early_stop:  # torchattacks keeps the latest fooling iterate
                x_best_adv[~pred] = x_adv[~pred] + 0.0
            active = self._retire(acc, active)

            with torch.no_grad():
                y1 = loss_indiv.detach().clone()
                loss_steps[i] = y1.cpu() + 0
                ind = (y1 > loss_best).nonzero().squeeze()
                x_best[ind] = x_adv[ind].clone()
                grad_best[ind] = grad[ind].clone()
                loss_best[ind] = y1[ind] + 0
                counter3 += 1
                if counter3 == k:
                    fl_oscillation = self._oscillation(loss_steps.detach().cpu().numpy(), i, k)
                    fl_reduce_no_impr = (~reduced_last_check) * (
                        loss_best_last_check.cpu().numpy() >= loss_best.cpu().numpy())
                    fl_oscillation = ~(~fl_oscillation * ~fl_reduce_no_impr)
                    reduced_last_check = np.copy(fl_oscillation)
                    loss_best_last_check = loss_best.clone()
                    if np.sum(fl_oscillation) > 0:
                        step_size[u[fl_oscillation]] /= 2.0
                        fl_oscillation = np.where(fl_oscillation)
                        x_adv[fl_oscillation] = x_best[fl_oscillation].clone()
                        grad[fl_oscillation] = grad_best[fl_oscillation].clone()
                    counter3 = 0
                    k = np.maximum(k - size_decr, steps_min)
        return ~acc, x_best_adv

    def _retire(self, acc, active):
        """With early stopping, the images fooled so far leave the batch."""
        return active & acc if self.early_stop else active

    def _oscillation(self, losses, j, k):
        """Whether, per image, the loss rose in at most ``rho * k`` of the last ``k`` steps."""
        t = np.zeros(losses.shape[1])
        for counter5 in range(k):
            t += losses[j - counter5] > losses[j - counter5 - 1]
        return t <= k * self.rho * np.ones(t.shape)
