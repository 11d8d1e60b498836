"""The evaluation as a library call, for any network that maps images to class scores:

    import robustness
    result = robustness.evaluate(model, images, labels, eps=8/255)        # suite 'quick'
    result['worst_case'][0]['accuracy'], result['sanity'], result['per_sample']['worst_case_robust']

:func:`evaluate` runs the same suite, the same per-sample worst case and the same sanity checks as
``evaluate.py``, which is a thin command line over it (``robustness.checkpoint_evaluation``:
the test images of a checkpoint's data set, this function, the output files). It returns what
``evaluate.py`` writes to ``robustness.json``, plus ``per_sample`` (``per_sample.npz``'s arrays).

Two model conventions:

- *This project's networks* (``networks``/``layers``: a ``settings`` attribute, input
  ``x[B, C, H, W, T]``, output ``(out, _)``) are used as they are. Spiking ones get the surrogate
  sweep of the suite (the published backward, exact BPTT under several surrogates, sharpened).
- *Any other module* (``images[B, C, H, W] -> scores``) is wrapped in :class:`ImageScoresModel`:
  the suite's model input ``x[B, C, H, W, 1]`` (one time step: the image is the input, direct
  encoding; the network does its own time loop) is fed as ``x.mean(-1)``, and the scores come back
  as ``[B, n_class, 1]``. Outputs ``[B, n_class]`` are scores; a tuple's first item is taken
  (snnTorch's ``(spikes, membrane)``); ``[T, B, n_class]`` (SpikingJelly's multi-step) and
  ``[B, n_class, T]`` are summed over time (``output=`` overrides the guess). Its gradient paths
  are plain autograd (``'autograd'``) and those the caller supplies:

      gradient_paths={'atan:4': lambda: swap_surrogate(model, surrogate.ATan(alpha=4.0))}

  each value a zero-argument callable returning a context manager within which autograd through
  the model is that backward (e.g. a ``contextlib.contextmanager`` that sets every
  ``surrogate_function`` and restores it). The names become rows of the ranking sweep and members
  of the ensemble, like the built-in paths.

Budget: ``budget='smoke'`` divides the steps of every attack but the published ones by 10 (at
least 2; Square's queries too, the ranking sweep's 10 steps become 3; ``plan.smoke_plan``): a
check that the pipeline runs on a model, in seconds, not a robustness number.

Units: ``images`` are what the model takes; ``mean``/``std`` (per channel, or one number) say how
they relate to pixels in [0, 1] (``image = (pixel - mean) / std``; default 0 and 1: the images are
pixels; this project's networks take normalised images, so for them mean and std are required:
``datasets.NORMALISATION[name]``). ``eps`` is in pixel units (``8/255``), as in the rest of the project; ``clamp`` keeps
the perturbed pixels in [0, 1].
"""
import contextlib
import dataclasses
import time
from fractions import Fraction

import torch
import torch.nn as nn

from runtime.distributed import DistContext
from layers import class_scores, time_expand
from robustness.evaluation import published_attack_fn, run_evaluation, spike_warnings
from robustness.paths import AUTOGRAD, CUSTOM_PATHS, ENSEMBLE, is_spiking
from robustness.plan import BUDGETS, SUITES
from robustness.report import per_sample_arrays
from robustness.threats import THREATS, parse_eps

RESERVED_PREFIXES = ('bptt:', ENSEMBLE, 'best:', 'sharper:', 'partner:')


@dataclasses.dataclass(frozen=True)
class AdapterSettings:
    """What the suite and the published attacks read of ``model.settings``."""
    n_class: int
    n_steps: int = 1
    loss: str = 'softmax'  # the published attacks ascend the cross-entropy of the scores


def _time_summed(out, batch):
    """``out`` of an images -> scores model as ``[B, n_class]`` (see the module docstring)."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.dim() == 2:
        return out
    if out.dim() == 3 and out.shape[1] == batch and out.shape[0] != batch:
        return out.sum(0)   # [T, B, n_class]
    if out.dim() == 3 and out.shape[0] == batch:
        return out.sum(-1)  # [B, n_class, T]
    raise ValueError(f"the model returned shape {tuple(out.shape)} for a batch of {batch}: pass "
                     f"output= a function from its output to scores [B, n_class]")


class ImageScoresModel(nn.Module):
    """A plain ``images -> scores`` module in this project's convention: ``forward(x, is_train)``
    with ``x[B, C, H, W, T]`` in the model's own input units returns ``(scores[B, n_class, 1],
    None)``; the model sees ``x.mean(-1)`` (T = 1 here: ``x[..., 0]``). ``output``: None (guess, see
    :func:`_time_summed`) or a function ``output -> scores[B, n_class]``. ``reset``: called with the
    model before every forward (SpikingJelly: ``functional.reset_net``). ``gradient_paths``:
    ``{name: context-manager factory}``, the model's own gradient paths (``robustness.paths``)."""

    def __init__(self, model, n_class, gradient_paths=None, output=None, reset=None):
        super().__init__()
        self.model = model
        self.settings = AdapterSettings(n_class=n_class)
        self.output, self.reset = output, reset
        setattr(self, CUSTOM_PATHS, dict(gradient_paths or {}))

    def forward(self, x, is_train=False):
        if self.reset is not None:
            self.reset(self.model)
        out = self.model(x.mean(-1))
        scores = self.output(out) if self.output is not None else _time_summed(out, len(x))
        return scores.unsqueeze(-1), None


def is_project_model(model):
    """A network of this project (``x[B, C, H, W, T]`` in, ``(out, _)`` out, ``model.settings``)."""
    return hasattr(model, 'settings') and hasattr(model.settings, 'n_steps')


def _check_paths(gradient_paths):
    for name, factory in (gradient_paths or {}).items():
        if not isinstance(name, str) or not name or '+' in name or name in (
                AUTOGRAD, 'published', 'none') or name.startswith(RESERVED_PREFIXES):
            raise ValueError(f"gradient_paths: {name!r} is not a usable name (no '+', not "
                             f"'autograd'/'published'/'none', no prefix {', '.join(RESERVED_PREFIXES)})")
        if not callable(factory):
            raise ValueError(f"gradient_paths[{name!r}] must be a callable returning a context manager")


def adapt(model, n_class, gradient_paths=None, output=None, reset=None):
    """``model`` in the suite's convention: this project's networks as they are, any other module
    wrapped in :class:`ImageScoresModel`."""
    if is_project_model(model):
        if gradient_paths:
            raise ValueError("gradient_paths: this project's networks take their paths from the "
                             "suite (the surrogate sweep); custom paths are for other models")
        return model
    _check_paths(gradient_paths)
    return ImageScoresModel(model, n_class, gradient_paths, output, reset)


def _per_channel(values, channels, name):
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"{name}: {len(values)} values for {channels} channels")
    return tuple(values)


def _device_dtype(model, device):
    tensor = next(iter(list(model.parameters()) + list(model.buffers())), None)
    dev = torch.device(device) if device is not None else (tensor.device if tensor is not None
                                                            else torch.device('cpu'))
    dtype = tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32
    return dev, dtype


def _published_attack(mean, std):
    """The published attacks (attack.py) in the images' units: scalar mean/std as in the YAMLs,
    per-channel ones as tensors broadcasting over ``x[B, C, H, W, T]``."""
    if len(set(mean)) == 1 and len(set(std)) == 1:
        return published_attack_fn({'mean': mean[0], 'std': std[0]})
    from attack import ATTACKS

    def run(name, model, x, labels, eps, clamp):
        view = lambda v: torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1, 1)
        s, m = view(std), view(mean)
        return ATTACKS[name](model, x, labels, float(eps) / s, ((0 - m) / s, (1 - m) / s) if clamp else None)
    return run


def evaluate(model, images, labels, eps=Fraction(8, 255), *, suite='quick', threat='per-step',
             clamp=False, mean=None, std=None, n_class=None, batch_size=64, device=None,
             gradient_paths=None, output=None, reset=None, partner=None, sanity_eps=True,
             standalone=False, budget='full', seed=0, log=None, published_normalization=None,
             all_reduce=None, all_gather=None, ctx=None, indices=None):
    """Evaluate ``model`` on ``images`` ``[N, C, H, W]`` (tensor or array) and ``labels`` ``[N]``
    with ``suite`` (``published``, ``quick``, ``full``) at ``eps`` (one ε or a list; pixel units:
    ``8/255``, ``'8/255'``, a Fraction) under ``threat`` (``'per-step'``, ``'static'`` or both:
    ``'per-step,static'`` or a list) and ``clamp`` (False, True, ``'both'`` or a list).

    ``model``: this project's network, or any module ``images -> scores`` (module docstring:
    ``output``, ``reset`` and ``gradient_paths`` are for those). ``partner``: a second model of
    either kind, the source of the transfer attacks. ``n_class``: default from one forward pass.
    ``batch_size``: images per attack batch; ``device``: default the model's. ``sanity_eps``: add
    the masking check's run at ε = 64/255. ``standalone``: every attack on every image instead of
    the cascade. ``budget``: ``'full'`` (the suite as specified) or ``'smoke'`` (a tenth of the
    steps: a quick check that the pipeline runs, not a result). ``seed``: seeds torch's global RNG (random starts) before the run. ``log``: a
    function taking each progress line (default: silent). ``published_normalization``: the scalar
    ``(mean, std)`` the published attacks work in (SPEC §6: the YAML's ``Network.mean``/``std``,
    scalars even for colour data sets; default: ``mean``/``std``).

    Returns robustness.json's content (``suite``, ``n_samples``, ``clean_accuracy``, ``rows``,
    ``worst_case``, ``sanity``, ``wall_time_s``, ``threat_models``) and ``per_sample``: per_sample.npz's
    arrays (``labels``, ``clean_correct``, ``fooled[row, sample]`` (1 fooled, 0 not, -1 not attacked),
    ``worst_case_robust[group, sample]`` ...). ``all_reduce``/``all_gather``/``ctx``/``indices``
    are for a sharded run (``evaluate.py`` under torchrun): this process's share of the images,
    their global ``indices``, and the collective operations of ``runtime.distributed``."""
    if suite not in SUITES:
        raise ValueError(f"suite {suite!r}: choose one of {', '.join(SUITES)}")
    if budget not in BUDGETS:
        raise ValueError(f"budget {budget!r}: choose one of {', '.join(BUDGETS)}")
    eps_list = [parse_eps(e, 'eps') for e in (eps if isinstance(eps, (list, tuple)) else [eps])]
    threats = threat.split(',') if isinstance(threat, str) else list(threat)
    threats = [t.strip() for t in threats if t.strip()]
    for name in threats:
        if name not in THREATS:
            raise ValueError(f"threat {name!r}: choose from {', '.join(THREATS)}")
    clamps = ([False, True] if clamp == 'both' else
              [bool(c) for c in clamp] if isinstance(clamp, (list, tuple)) else [bool(clamp)])
    dev, dtype = _device_dtype(model, device)
    images = torch.as_tensor(images).to(dev, dtype)
    labels = torch.as_tensor(labels).to(dev, torch.int64)
    if images.dim() != 4 or len(images) != len(labels):
        raise ValueError(f"images must be [N, C, H, W] with one label each: got "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}")
    was_training = model.training
    model.eval()
    if n_class is None:
        n_class = _infer_n_class(model, images, output, reset)
    target = adapt(model, n_class, gradient_paths, output, reset)
    partner_model = None
    if partner is not None:
        partner.eval()
        partner_model = adapt(partner, n_class, None, output, reset)
    channels = images.shape[1]
    if target is model and (mean is None or std is None):
        raise ValueError("this project's networks take normalised images: pass mean= and std= of "
                         "the data set (datasets.NORMALISATION[name])")
    mean = 0.0 if mean is None else mean
    std = 1.0 if std is None else std
    mean, std = _per_channel(mean, channels, 'mean'), _per_channel(std, channels, 'std')
    if ctx is None:
        ctx = DistContext(device=dev)
    if indices is None:
        indices = torch.arange(len(labels))
    torch.manual_seed(seed)
    log = log or (lambda message: None)
    start = time.perf_counter()
    # A silent output layer or one-class predictions score chance in every row: say so, as
    # evaluate.py does, instead of returning a table of chance numbers.
    warnings = (spike_warnings(target, images, ctx, batch_size) if target is model
                else one_class_warnings(target, images, batch_size))
    for warning in warnings:
        log(f"warning: {warning}")
    published = (published_attack_fn(dict(zip(('mean', 'std'), published_normalization)))
                 if published_normalization is not None else _published_attack(mean, std))
    try:
        result, table = run_evaluation(
            target, images, labels, indices, ctx, suite=suite, eps_list=eps_list,
            threats=threats, clamps=clamps, mean=mean, std=std, batch_size=batch_size,
            published_attack=published, partner=partner_model, sanity_eps=sanity_eps, log=log,
            all_reduce=all_reduce, all_gather=all_gather, standalone=standalone, budget=budget)
    finally:
        model.train(was_training)
    result = {**result, 'warnings': warnings, 'budget': budget, 'threat_models': {'threats': threats, 'clamps': clamps,
                                          'mean': list(mean), 'std': list(std)},
              'model_convention': 'project' if target is model else 'images->scores',
              'gradient_paths': _paths_note(target)}
    result['per_sample'] = per_sample_arrays(result['rows'], table, result['worst_case'])
    result['wall_time_s'] = round(time.perf_counter() - start, 1)
    return result


def one_class_warnings(target, images, batch_size):
    """The warning for an ``images -> scores`` model that predicts one class for every image
    (such a model has no spiking layers of this project to monitor)."""
    with torch.no_grad():
        predictions = torch.cat([
            class_scores(target, time_expand(images[i:i + batch_size], 1)).argmax(1)
            for i in range(0, len(images), batch_size)])
    classes = predictions.unique()
    if len(predictions) < 2 or len(classes) > 1:
        return []
    return [f"robustness.evaluate: every prediction is class {int(classes[0])} on the "
            f"{len(predictions)} clean images, so the accuracy is chance, not a result"]


def _paths_note(target):
    from robustness.paths import custom_gradient_paths
    if is_spiking(target):
        return 'this project\'s surrogate sweep'
    return [AUTOGRAD, *custom_gradient_paths(target)]


def _infer_n_class(model, images, output, reset):
    if is_project_model(model):
        return model.settings.n_class
    with torch.no_grad():
        probe = ImageScoresModel(model, 0, output=output, reset=reset)
        scores, _ = probe(images[:1].unsqueeze(-1))
    return scores.shape[1]


@contextlib.contextmanager
def swapped_attribute(modules, name, value):
    """Set ``module.<name> = value`` on every module of ``modules`` that has it; restore on exit.
    A ready-made gradient path for SpikingJelly:
    ``{'atan:4': lambda: swapped_attribute(net.modules(), 'surrogate_function', surrogate.ATan(4.))}``."""
    touched = [(m, getattr(m, name)) for m in modules if hasattr(m, name)]
    try:
        for module, _ in touched:
            setattr(module, name, value)
        yield
    finally:
        for module, old in touched:
            setattr(module, name, old)
