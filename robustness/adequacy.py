"""Attack adequacy: the binarization test of Zimmermann, Brendel, Tramèr and Carlini (2022),
"Increasing confidence in adversarial robustness evaluations" (NeurIPS; Algorithm 1, reference
code: github.com/google-research/active-adversarial-tests).

A robust accuracy is only as good as the attacks behind it: an attack that cannot follow the
model's gradient reports robustness that is not there. The binarization test checks the attack
on a task whose answer is known. For every evaluated image ``x`` it builds a *binarized* model
that keeps the whole original network as a feature extractor and replaces the read-out by a
linear two-class read-out ("clean" / "adversarial"), fitted so that

- ``x`` and ``n_inner`` random points of a smaller ball around it (radius ``inner_fraction * ε``)
  are "clean", and
- one planted point inside the ε-ball (a corner of the ball, projected by the threat model) is
  "adversarial".

So an adversarial example of the binarized model provably exists in the ε-ball. An adequate
attack, run on the binarized model exactly as the suite runs it on the real one (same threat
model, same gradient paths), must find one -- the planted point or any other; the test fails
("attack inadequate") when it does so for fewer than 95% of the images where the construction
worked. Images where no linear read-out separates the planted point from the inner points
(the features of a spiking network are spike counts, so distinct inputs can give identical
features) are counted as *not applicable*, never as passes.

Features. By default the model's class scores (:func:`robustness.threats.class_scores`:
any image->scores model works). The paper reads out the penultimate layer: pass
``features=layer_features(model.layers[-2])`` (any hooked module) for a wider feature vector.

Batching. Every image has its own read-out, but attacks drop images they have fooled and call
the model on subsets (our PGD, torchattacks), so the read-out cannot be chosen by batch
position. The binarized model therefore routes each input to the read-out of the image whose
ε-ball contains it (the nearest anchor in L∞, measured in ε units). That is unambiguous when
the anchors of one batch are more than 2 ε apart; images closer than that go to separate
batches (:func:`_separated_groups`).
"""
import dataclasses
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustness.threats import class_scores
from runtime.formatting import eps_text

ADEQUACY_MIN_SHARE = 0.95  # the attack must break at least this share of the applicable images
ANCHOR_SEPARATION = 2.5    # anchors of one attack batch are further apart than this (ε units)
CHECK_NAME = 'attack adequacy: binarization test (Zimmermann et al. 2022)'


# --- features -----------------------------------------------------------------------------------

def score_features(model, x):
    """The default features: the class scores ``predict`` uses, ``[B, n_class]``."""
    return class_scores(model, x)


def layer_features(layer, batch_dim=1):
    """Features read from ``layer``'s output by a forward hook (e.g. the penultimate layer):
    ``features(model, x) -> [B, d]``, differentiable. ``batch_dim`` is the batch axis of the
    layer's output (1 for ``layers.Network``'s time-major ``[T, B, ...]``); a tuple output (the
    layers' ``(h, membrane)``) is read at its first element."""
    def features(model, x):
        captured = []

        def hook(module, inputs, output):
            captured.append(output[0] if isinstance(output, tuple) else output)

        handle = layer.register_forward_hook(hook)
        try:
            model(x, False)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"the feature layer ran {len(captured)} times in one forward pass")
        return captured[0].movedim(batch_dim, 0).flatten(1)
    return features


# --- the binarized model ------------------------------------------------------------------------

class BinarizedModel(nn.Module):
    """``x -> (clean, adversarial)`` scores: the original network's features, then the linear
    read-out of the image whose ε-ball holds ``x``. Class 0 is "clean", 1 "adversarial".

    It follows ``layers.Network``'s calling convention, ``forward(x, is_train=False) -> (out,
    extra)`` with ``out[B, 2, 1]`` (a time axis of one step), so :func:`class_scores`, our PGD and
    torchattacks' wrapper (``robustness.attacks.ImageModel``) run on it unchanged. What that needs
    of the wrapper: the network is a *submodule* (``self.model``), so
    ``layers.gradients.use_gradient_path(binarized, path)`` reaches its spiking layers through
    ``modules()`` and every gradient path of the suite applies; ``settings`` is the network's
    ``settings`` with ``n_class = 2`` (``ImageModel`` reads ``n_class``; ``n_steps`` passes
    through); parameters of the network keep their ``requires_grad``, the read-out is buffers.
    """

    def __init__(self, model, features, anchors, scale, weight, bias):
        super().__init__()
        self.model = model
        self.features = features
        settings = getattr(model, 'settings', None)
        self.settings = (dataclasses.replace(settings, n_class=2)
                         if dataclasses.is_dataclass(settings) else settings)
        self.register_buffer('anchors', anchors)  # [S, C, H, W, T]: the images, model units
        self.register_buffer('scale', scale)      # [1, C, 1, 1, 1]: ε per channel, model units
        self.register_buffer('weight', weight)    # [S, d]
        self.register_buffer('bias', bias)        # [S]

    def owner(self, x):
        """Index of the anchor nearest to each input in L∞ (ε units); no gradient flows here."""
        with torch.no_grad():
            inputs = (x / self.scale).flatten(1)
            anchors = (self.anchors / self.scale).flatten(1)
            distance = torch.cdist(inputs[None], anchors[None], p=float('inf'))[0]
            return distance.argmin(1)

    def margin(self, x):
        """``z[B]``: > 0 means "adversarial"."""
        owner = self.owner(x)
        features = self.features(self.model, x)
        return (features * self.weight[owner]).sum(1) + self.bias[owner]

    def forward(self, x, is_train=False):
        z = self.margin(x)
        # Symmetric scores: their difference is z, so CE and margin losses both see z itself.
        scores = torch.stack([-z / 2, z / 2], 1)
        return scores[:, :, None], {}


def _corner_deltas(threat, x, eps, n, generator):
    """``n`` random corners of the ε-ball per image, projected (clamp): ``[n, *delta_shape]``."""
    shape = (n, *threat.delta_shape(x))
    signs = torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    bound = threat.eps_model(eps, x)
    return torch.stack([threat.project(x, signs[i] * bound, eps) for i in range(n)])


def _inner_deltas(threat, x, eps, n, fraction, generator):
    """``n`` uniform points of the ball of radius ``fraction * ε`` per image, projected."""
    shape = (n, *threat.delta_shape(x))
    noise = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    bound = threat.eps_model(eps, x) * fraction
    return torch.stack([threat.project(x, noise[i] * bound, eps) for i in range(n)])


def _features_of(model, features, threat, x, deltas):
    """Features of ``x + deltas[k]`` for every k: ``[B, K, d]`` (no gradient)."""
    with torch.no_grad():
        return torch.stack([features(model, threat.apply(x, delta)) for delta in deltas], 1)


def _fit_direction(inner, planted, steps=100, l2=1e-3):
    """A linear read-out direction per image: logistic regression of "planted" (1) against
    "inner" (0), the two classes weighted equally, on features standardised per image; one
    L-BFGS over all images at once (the problems are independent, so their summed loss has
    independent gradients). Returns ``w[S, d]`` in raw feature units."""
    points = torch.cat([inner, planted[:, None]], 1)           # [S, K + 1, d]
    mean = points.mean(1, keepdim=True)
    std = points.std(1, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))     # a constant feature stays put
    standard = (points - mean) / std
    target = torch.zeros(points.shape[:2], dtype=points.dtype, device=points.device)
    target[:, -1] = 1
    n_inner = inner.shape[1]
    weights = torch.full_like(target, 0.5 / n_inner)
    weights[:, -1] = 0.5
    w = torch.zeros(points.shape[0], points.shape[2], dtype=points.dtype, device=points.device,
                    requires_grad=True)
    b = torch.zeros(points.shape[0], dtype=points.dtype, device=points.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn='strong_wolfe')

    def closure():
        optimizer.zero_grad()
        logits = (standard * w[:, None]).sum(2) + b[:, None]
        loss = (F.binary_cross_entropy_with_logits(logits, target, weight=weights,
                                                   reduction='none').sum(1)
                + l2 * (w ** 2).sum(1)).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return (w / std[:, 0]).detach()


@dataclasses.dataclass
class Binarization:
    """The binarized model of a batch of images and what was planted in it."""
    model: BinarizedModel
    planted: torch.Tensor     # [S, C, H, W, T]: the known adversarial example of each image
    inner: torch.Tensor       # [K, S, C, H, W, T]: the points fitted as "clean" (x excluded)
    applicable: torch.Tensor  # [S] bool: the read-out separates (checked through the model)
    trivial: torch.Tensor     # [S] bool: a fresh random corner is already "adversarial"


def binarize(model, x, threat, eps, *, features=score_features, n_inner=16, n_boundary=16,
             n_random=4, inner_fraction=0.95, generator=None):
    """Build the binarized model of the images ``x[S, C, H, W, T]`` (model units).

    Per image: ``n_inner`` points uniform in the ball of radius ``inner_fraction * ε`` and ``x``
    itself are "clean"; of ``n_boundary`` random corners of the ε-ball (projected by the threat
    model) the one whose features lie furthest from the nearest inner point's is planted as
    "adversarial". A logistic regression gives the read-out direction; its threshold is put
    halfway between the highest inner score and the planted point's score, so the planted point
    is adversarial with the largest margin the direction allows. An image is *applicable* when
    the binarized model itself (its forward pass, not the fitted numbers) calls ``x`` and every
    inner point clean and the planted point adversarial. ``trivial`` marks applicable images
    where one of ``n_random`` fresh random corners is already adversarial (the test is then
    easy for that image; the paper reports this as the random attack's success)."""
    x = x.detach()
    generator = generator or torch.Generator(device=x.device).manual_seed(0)
    inner_deltas = torch.cat([torch.zeros(1, *threat.delta_shape(x), dtype=x.dtype,
                                          device=x.device),
                              _inner_deltas(threat, x, eps, n_inner, inner_fraction, generator)])
    corners = _corner_deltas(threat, x, eps, n_boundary, generator)
    inner_features = _features_of(model, features, threat, x, inner_deltas)   # [S, K + 1, d]
    corner_features = _features_of(model, features, threat, x, corners)      # [S, n_boundary, d]
    # The corner whose features are furthest from every inner point is the easiest to separate.
    gap = torch.cdist(corner_features, inner_features).amin(2)                 # [S, n_boundary]
    choice = gap.argmax(1)
    rows = torch.arange(len(x), device=x.device)
    planted_delta = corners[choice, rows]
    planted_features = corner_features[rows, choice]
    weight = _fit_direction(inner_features, planted_features).to(x.dtype)
    inner_z = (inner_features * weight[:, None]).sum(2).amax(1)
    planted_z = (planted_features * weight).sum(1)
    bias = -(inner_z + planted_z) / 2
    scale = threat.eps_model(eps, x)
    binarized = BinarizedModel(model, features, x, scale if scale.dim() == 5 else scale[..., None],
                               weight, bias)
    planted = threat.apply(x, planted_delta)
    inner_points = torch.stack([threat.apply(x, delta) for delta in inner_deltas[1:]])
    # Verify through the module: the read-out must hold for the forward pass the attack sees.
    with torch.no_grad():
        clean_ok = torch.stack([binarized.margin(threat.apply(x, delta)) < 0
                                for delta in inner_deltas]).all(0)
        planted_ok = binarized.margin(planted) > 0
        applicable = clean_ok & planted_ok & (gap.amax(1) > 0)
        fresh = _corner_deltas(threat, x, eps, n_random, generator)
        trivial = torch.stack([binarized.margin(threat.apply(x, delta)) > 0
                               for delta in fresh]).any(0) & applicable
    return Binarization(binarized, planted, inner_points, applicable, trivial)


def _separated_groups(x, scale, min_distance=ANCHOR_SEPARATION):
    """Split the image indices into groups whose images are pairwise more than ``min_distance``
    ε apart in L∞ (greedy, in order): within a group every ε-ball has one owner."""
    flat = (x / scale).flatten(1)
    distance = torch.cdist(flat[None], flat[None], p=float('inf'))[0]
    groups = []
    for i in range(len(x)):
        for group in groups:
            if bool((distance[i, group] > min_distance).all()):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _succeeded(binarized, threat, x, x_adv, eps):
    """Whether the attack's output, projected onto the threat model (a static threat takes the
    first time step's perturbation), is classified adversarial by the binarized model."""
    delta = x_adv.detach() - x
    if threat.static:
        delta = delta[..., 0]
    delta = threat.project(x, delta, eps)
    with torch.no_grad():
        return binarized.margin(threat.apply(x, delta)) > 0


def binarization_test(model, images_x, labels, threat, eps, attack, *, attack_name='attack',
                      features=score_features, n_inner=16, n_boundary=16, n_random=4,
                      inner_fraction=0.95, batch_size=64, seed=0,
                      min_share=ADEQUACY_MIN_SHARE):
    """Run ``attack(binarized_model, x, labels, threat, eps) -> x_adv`` on the binarized model of
    every image of ``images_x[N, C, H, W, T]`` (model units, time-expanded) and report whether
    it finds the adversarial example known to exist.

    ``labels`` only fixes the sample count here (the binarized task's label is "clean", class 0,
    for every image); ``attack`` is the caller's strongest attack with its gradient path, e.g.
    ``lambda m, x, y, t, e: run_attack(spec, path, m, None, x, y, t, e, None)``. Losses need at
    most two classes (CE, margin; not DLR). The attack and the construction run under their own
    RNG state (``seed``), which leaves the caller's untouched.

    Returns a JSON-ready check in the format of ``adaptive.sanity_checks`` (``check``,
    ``passed``, ``detail``) with the numbers behind it: ``value`` (share of applicable images
    the attack broke), ``threshold``, ``n_samples``, ``n_applicable``, ``n_not_applicable``,
    ``n_broken``, ``n_trivial``, ``eps``, ``threat``, ``clamp``, ``attack``, ``time_s``.
    ``passed`` is None when no image was applicable."""
    if len(images_x) != len(labels):
        raise ValueError(f"{len(images_x)} images but {len(labels)} labels")
    start = time.perf_counter()
    device = images_x.device
    n_applicable = n_broken = n_trivial = 0
    cuda = device.type == 'cuda'
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type='cuda'):
        torch.manual_seed(seed)
        generator = torch.Generator(device=device).manual_seed(seed)
        for begin in range(0, len(images_x), batch_size):
            x = images_x[begin:begin + batch_size].detach()
            built = binarize(model, x, threat, eps, features=features, n_inner=n_inner,
                             n_boundary=n_boundary, n_random=n_random,
                             inner_fraction=inner_fraction, generator=generator)
            index = built.applicable.nonzero()[:, 0]
            n_applicable += len(index)
            n_trivial += int(built.trivial.sum())
            if len(index) == 0:
                continue
            scale = built.model.scale
            for group in _separated_groups(x[index], scale):
                members = index[group]
                xs = x[members]
                binarized = BinarizedModel(model, features, xs, scale, built.model.weight[members],
                                           built.model.bias[members])
                clean = torch.zeros(len(members), dtype=torch.long, device=device)
                x_adv = attack(binarized, xs, clean, threat, eps)
                n_broken += int(_succeeded(binarized, threat, xs, x_adv, eps).sum())
    return adequacy_check(len(images_x), n_applicable, n_broken, n_trivial, threat, eps,
                          attack_name, time.perf_counter() - start, min_share)


def adequacy_check(n, n_applicable, n_broken, n_trivial, threat, eps, attack_name, time_s,
                   min_share=ADEQUACY_MIN_SHARE):
    """The check dict of a binarization test from its counts (``robustness.suite`` sums the
    counts of every rank's shard, then calls this once)."""
    share = n_broken / n_applicable if n_applicable else None
    passed = None if share is None else share >= min_share
    setting = (f"eps={eps_text(eps)} ({threat.threat}, clamp={str(threat.clamp).lower()}, "
               f"{attack_name})")
    if passed is None:
        detail = f"not applicable: no linear read-out separated a planted point for any of {n} images"
    else:
        detail = (f"the attack found an adversarial example for {n_broken} of {n_applicable} "
                  f"binarized images where one is known to exist ({100 * share:.1f}%, needed "
                  f"{100 * min_share:g}%); {n - n_applicable} of {n} not applicable; "
                  f"{n_trivial} solvable by a random corner")
        if not passed:
            detail += ': attack inadequate'
    return {'check': f"{CHECK_NAME} at {setting}", 'passed': passed, 'detail': detail,
            'value': share, 'threshold': min_share, 'n_samples': n,
            'n_applicable': n_applicable, 'n_not_applicable': n - n_applicable,
            'n_broken': n_broken, 'n_trivial': n_trivial, 'eps': eps_text(eps),
            'threat': threat.threat, 'clamp': threat.clamp, 'attack': attack_name,
            'time_s': round(time_s, 3)}
