"""Which ``Network.model`` (neuron type) a checkpoint holds, so that ``-d N --ckpt X`` (evaluate.py)
and ``-d N --set DEFAULT.ckpt=X`` (main.py) need no ``--set Network.model=...``.

The checkpoint says it itself: its saved config (``checkpoint['config']['Network']['model']``,
written by this project into every checkpoint) when present, else the state dict, read through
``STATE_DICT_SIGNATURES`` -- the first entry whose test accepts the names of the state dict's
tensors names the model. Adding a neuron type (e.g. ``ANN``) is one entry there (placed before
the entries it would otherwise match). A model given explicitly (``--config FILE``, or
``--set Network.model=...``) is never replaced: a checkpoint that contradicts it stays the
one-line error of ``training.experiment.load_model_weights``.
"""
from dataclasses import dataclass
from typing import Callable

from config import ConfigError
from layers.ann import MODELS  # the spiking models and the ANN twin
from runtime.checkpoint import load_checkpoint


@dataclass(frozen=True)
class Signature:
    model: str          # the Network.model it means
    evidence: str       # as the log line says it
    matches: Callable   # (set of tensor names, the last component of each key) -> bool


STATE_DICT_SIGNATURES = (
    Signature('ALIF', 'theta_v parameters / NDS buffers (target_train)',
              lambda names: bool(names & {'theta_v', 'target_train'})),
    Signature('LIF', 'no theta_v parameters and no NDS buffers', lambda names: True),
)


def model_of_checkpoint(checkpoint, path):
    """``(model, how)``: the ``Network.model`` of a loaded checkpoint and where that was read
    (``'its saved config'`` or ``'its state dict: <evidence>'``). ConfigError when the saved config
    names a model this version does not know."""
    saved = checkpoint.get('config')
    network = saved.get('Network') if isinstance(saved, dict) else None
    model = network.get('model') if isinstance(network, dict) else None
    if model is not None:
        if model not in MODELS:
            raise ConfigError(f"checkpoint '{path}' was saved from Network.model={model!r}, which "
                              f"this version does not know (one of {', '.join(MODELS)})")
        return model, 'its saved config'
    names = {key.rsplit('.', 1)[-1] for key in checkpoint['net']}
    for signature in STATE_DICT_SIGNATURES:
        if signature.model in MODELS and signature.matches(names):
            return signature.model, f"its state dict: {signature.evidence}"
    raise ConfigError(f"checkpoint '{path}': cannot tell its Network.model from its state dict; "
                      f"pass --set Network.model=... ({', '.join(MODELS)})")


def model_is_explicit(args):
    """Whether the command line fixes the neuron type itself: ``--config FILE`` (the file is the
    experiment) or ``--set Network.model=...``."""
    if getattr(args, 'config', None) is not None:
        return True
    return any(text.partition('=')[0].strip() == 'Network.model' for text in args.set)


def checkpoint_model_override(args, cfg):
    """``(override, note)`` for a ``-d N`` run from a checkpoint (``cfg['DEFAULT']['ckpt']``):
    ``'Network.model=<the checkpoint's>'`` (None when the config already has it) and the line to
    log; ``(None, None)`` without a checkpoint or when the model is explicit."""
    path = cfg['DEFAULT']['ckpt']
    if path is None or model_is_explicit(args):
        return None, None
    model, how = model_of_checkpoint(load_checkpoint(path), path)
    note = f"Network.model={model}: from checkpoint '{path}' ({how})"
    if model == cfg['Network']['model']:
        return None, note
    return f"Network.model={model}", f"{note}; the config said {cfg['Network']['model']}"


def config_for_checkpoint(args, config_from_args):
    """``config_from_args(args)`` with the neuron type taken from the run's checkpoint (see
    checkpoint_model_override); returns ``(config, warnings, config file, notes)``."""
    cfg, warnings, path = config_from_args(args)
    override, note = checkpoint_model_override(args, cfg)
    if override is not None:
        args.set = [override] + list(args.set)
        cfg, warnings, path = config_from_args(args)
    return cfg, warnings, path, [note] if note else []
