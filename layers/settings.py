"""The neuron- and loss-related keys of the YAML ``Network`` section, parsed once."""
from dataclasses import dataclass

from .config_keys import ConfigError, get_bool, get_choice, get_number

MODELS = ('LIF', 'ALIF')
LOSSES = ('kernel', 'softmax')


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

    @property
    def adaptive(self):
        return self.model == 'ALIF'

    @classmethod
    def of(cls, network_cfg):
        """``network_cfg`` as settings: parsed if it is the YAML's ``Network`` dict."""
        return network_cfg if isinstance(network_cfg, cls) else cls.from_config(network_cfg)

    @classmethod
    def from_config(cls, cfg, where='Network'):
        if not isinstance(cfg, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(cfg).__name__}")
        model = get_choice(cfg, 'model', where, MODELS, default='LIF')
        settings = cls(
            n_steps=get_number(cfg, 'n_steps', where, positive=True, integer=True),
            tau_m=get_number(cfg, 'tau_m', where, positive=True),
            tau_s=get_number(cfg, 'tau_s', where, positive=True),
            model=model,
            # Published YAMLs carry tau_v for LIF runs too; only ALIF needs it.
            tau_v=(get_number(cfg, 'tau_v', where, positive=True) if model == 'ALIF'
                   else cfg.get('tau_v')),
            is_bn=get_bool(cfg, 'is_bn', where),
            loss=get_choice(cfg, 'loss', where, LOSSES),
            n_class=get_number(cfg, 'n_class', where, positive=True, integer=True),
            save_target=get_bool(cfg, 'save_target', where),
            ckpt_v=cfg.get('ckpt_v') or None,
        )
        if settings.ckpt_v is not None and not isinstance(settings.ckpt_v, str):
            raise ConfigError(f"{where}.ckpt_v must be a file path or null, got {settings.ckpt_v!r}")
        if settings.loss == 'kernel':
            desired_pattern(settings.n_steps)  # raises if n_steps cannot be tiled
        return settings


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
