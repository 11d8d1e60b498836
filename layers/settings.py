"""The neuron- and loss-related keys of the YAML ``Network`` section, parsed once."""
from dataclasses import dataclass

from .config_keys import ConfigError, get_bool, get_choice, get_number, show
from .gradients import PUBLISHED, parse_gradient_path
from .neuron_registry import NEURONS

MODELS = tuple(NEURONS)
LOSSES = ('kernel', 'softmax')
# 20 times the 5 steps of every published model. Every step is one more pass through every layer
# (a Python loop over the steps): at 1000 steps one PGD evaluation of a handful of MNIST images
# already takes minutes on a CPU, and the NDS [*shape, T] of a large network gigabytes.
MAX_N_STEPS = 100
# theta_v starts at 1/tau_v: keep it a sane float32 number.
MIN_TAU_V = 1e-6


@dataclass(frozen=True)
class NetworkSettings:
    n_steps: int
    tau_m: float
    tau_s: float
    model: str
    tau_v: float
    is_bn: bool
    loss: str
    n_class: int
    save_target: bool
    ckpt_v: str = None
    # The gradient rule the training step takes (layers/gradients.py): None, the published
    # backward (SPEC §4), or a path object such as layers.bptt.BpttPath.
    train_gradient: object = None

    @property
    def neuron(self):
        """The ``neuron_registry.NEURONS`` entry of ``model``."""
        return NEURONS[self.model]

    @property
    def adaptive(self):
        return self.neuron.adaptive

    @classmethod
    def from_config(cls, cfg, where='Network'):
        if not isinstance(cfg, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(cfg).__name__}")
        model = get_choice(cfg, 'model', where, MODELS, default='LIF')
        settings = cls(
            n_steps=get_number(cfg, 'n_steps', where, positive=True, integer=True,
                               maximum=MAX_N_STEPS),
            tau_m=time_constant(cfg, 'tau_m', where),
            tau_s=time_constant(cfg, 'tau_s', where),
            model=model,
            # Published YAMLs carry tau_v for LIF runs too; only ALIF needs it.
            tau_v=(get_number(cfg, 'tau_v', where, positive=True, minimum=MIN_TAU_V)
                   if NEURONS[model].adaptive else cfg.get('tau_v')),
            is_bn=get_bool(cfg, 'is_bn', where),
            loss=get_choice(cfg, 'loss', where, LOSSES),
            n_class=get_number(cfg, 'n_class', where, positive=True, integer=True),
            save_target=get_bool(cfg, 'save_target', where),
            ckpt_v=nds_path(cfg, where),
            train_gradient=train_gradient(cfg, where),
        )
        if settings.loss == 'kernel':
            desired_pattern(settings.n_steps)  # raises if n_steps cannot be tiled
        return settings


def time_constant(cfg, key, where):
    """``tau_m`` / ``tau_s``: the neuron decays by ``1 - 1/tau`` per time step (SPEC §2, §4), which
    is a decay only for ``tau >= 1`` (below, the membrane or trace flips sign every step)."""
    tau = get_number(cfg, key, where, positive=True)
    if tau < 1:
        raise ConfigError(f"{where}.{key} must be >= 1 (the per-step decay 1 - 1/{key} must lie in "
                          f"[0, 1)), got {show(tau)}")
    return tau


def train_gradient(cfg, where):
    """``train_gradient``: ``published`` (absent or null too: the published training rule) or
    ``bptt:<surrogate>[:<sharpness>]``, the exact BPTT gradient through which the weights and
    ``theta_v`` are trained."""
    try:
        return parse_gradient_path(cfg.get('train_gradient', PUBLISHED))
    except ValueError as exc:
        raise ConfigError(f"{where}.train_gradient: {exc}") from None


def nds_path(cfg, where):
    """``ckpt_v``: a file path, or null (also an absent key or an empty string)."""
    path = cfg.get('ckpt_v')
    if path is None or path == '':
        return None
    if not isinstance(path, str) or '\0' in path:
        raise ConfigError(f"{where}.ckpt_v must be a file path or null, got {show(path)}")
    return path


def desired_pattern(n_steps):
    """The desired spike pattern of the kernel loss for the label's output neuron."""
    if n_steps < 10:
        base = [0, 1, 1, 1, 1]
    else:
        base = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    if n_steps % len(base):
        raise ConfigError(f"Network.n_steps={n_steps} cannot be tiled by the kernel loss's desired "
                          f"pattern of length {len(base)} (use 5, or a multiple of 10)")
    return base * (n_steps // len(base))
