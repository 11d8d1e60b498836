"""Experiment configuration: the published YAML schema (``DEFAULT``, ``Network``, ``ATTACK``,
``Layers``), ``--set`` overrides, defaults for the keys this project adds, and validation of all of
it before anything runs. Every error is a ``ConfigError`` whose one-line message names the file and
the key."""
import copy
import dataclasses
import math
import os

import yaml

from layers import (ANN, ConfigError, check_nds, layer_shapes, nds_shapes, nds_source,
                    network_settings, parse_gradient_path, read_nds_file, unknown_layer_keys)
from layers.gradients import PUBLISHED as PUBLISHED_GRADIENT, gradient_path_name
from layers.config_keys import get_bool, get_choice, get_number, get_pair, read_fraction, show
from errors import CodedWarning
from runtime.config_yaml import MAX_YAML_DEPTH, ConfigLoader, parse_yaml  # noqa: F401 (re-exported)
from attack import FT_METHODS  # ATTACK.ft_method: the attacks of usage 'train' (attack.ATTACKS)
from runtime.paths import PROJECT_ROOT, resolve_input_path

SECTIONS = ('DEFAULT', 'Network', 'ATTACK', 'Layers')
DTYPES = ('float32', 'float64')

# Keys this project adds get defaults that reproduce the published behaviour when absent.
DEFAULT_DEFAULTS = {'cleantrain': True, 'advtrain': False, 'advtest': True, 'ckpt': None,
                    'train_samples': None, 'test_samples': None, 'seed': 0, 'dtype': 'float32',
                    # Model selection: 'clean' = best clean test accuracy (published); 'robust' =
                    # best PGD accuracy at ATTACK.train[0] on val_samples training images held out.
                    'select': 'clean', 'val_samples': 1000}
SELECT_METRICS = ('clean', 'robust')
NETWORK_KEYS = {'epochs', 'model', 'tau_v', 'ckpt_v', 'batch_size', 'lr', 'T_max', 'is_bn',
                'save_target', 'n_steps', 'data_path', 'mean', 'std', 'dataset', 'loss', 'n_class',
                'tau_m', 'tau_s', 'train_gradient'}
# Carried by the published YAMLs but read by nothing (TSSL-BP leftovers): accepted silently.
PUBLISHED_UNUSED_KEYS = {'desired_count', 'undesired_count', 'rule'}
ATTACK_KEYS = {'strength', 'train', 'ft_method', 'ft_gradient', 'clamp', 'ft_steps', 'ft_step_size',
               'trades_beta', 'ft_eps_ramp_epochs'}
# Adversarial training (ATTACK.ft_method pgd_rs and trades): the published choices of Madry et al.
# (10 steps of 2.5 eps / steps) and Zhang et al. (TRADES beta = 6).
FT_STEPS_DEFAULT = 10
MAX_FT_STEPS = 1000  # each step is a forward and a backward per training batch
TRADES_BETA_DEFAULT = 6
# The published kernel-loss code (MNIST/CIFAR10) fixed the cosine period at 200 epochs; the softmax
# code (CIFAR100) used the number of epochs.
PUBLISHED_KERNEL_T_MAX = 200
# The code of resolve's warning that a TA-LIF network without Network.ckpt_v gets the published
# random NDS; callers whose network takes its NDS from a checkpoint drop the warning by this code.
RANDOM_NDS = 'random-nds'

# Bounds on what a config may ask for: far beyond every published setting, and refused with a
# one-line error before anything runs (instead of a hang, or an allocation that kills the machine).
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few kB
MAX_EPOCHS = 10_000
MAX_SAMPLES = 10**9  # a sample count (train_samples, test_samples, batch_size): beyond every data set
MAX_SEED = 2**63 - 1  # torch seeds are 64-bit; the run adds 1000 * rank and the epoch to it
MAX_LAYERS = 1000
MAX_EPSILONS = 32  # each runs four attacks (two of 7 steps) over the test set; published: 1 to 4
MAX_EPSILON = 1  # pixel units: images are in [0, 1]
MIN_STD = 1e-6  # eps / std must stay a sane float32 number
# Weight elements of the whole network (with the TA-LIF theta_v and NDS): 2**30 float32 are 4 GiB,
# 16 GiB with the optimiser state; the largest published network has 45 million.
MAX_PARAMETERS = 2**30
# Layer-output elements of one batch over all time steps (what the forward pass keeps for the
# backward): 2**33 float32 are 32 GiB; the published CIFAR100 batch has 3 * 10**8.
MAX_BATCH_ELEMENTS = 2**33



# The keys that count samples: integers only (1000, not 1000.0 or true), from 1 to MAX_SAMPLES.
# (DEFAULT.*_samples used to take 1e12, which then broke a slice in datasets/.)
SAMPLE_COUNT_KEYS = {'DEFAULT': ('train_samples', 'test_samples'), 'Network': ('batch_size',)}


def sample_count(value, name, optional=False):
    """``value`` as a number of samples: an int from 1 to MAX_SAMPLES (None too when
    ``optional``: all samples), else a one-line ConfigError naming ``name``."""
    if value is None and optional:
        return None
    what = 'an integer number of samples' + (' or null (all)' if optional else '')
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be {what}, e.g. 1000; got {show(value)}")
    if not 1 <= value <= MAX_SAMPLES:
        raise ConfigError(f"{name} must be {what} from 1 to {MAX_SAMPLES:,}, got {show(value)}")
    return value


def get_sample_count(section, key, where, optional=False):
    if key not in section and not optional:
        raise ConfigError(f"{where}.{key} is required")
    return sample_count(section.get(key), f"{where}.{key}", optional)


def config_path_for_dataset(index):
    """``-d N`` -> ``networks/<name>.yaml``, by the data-set registry (``datasets.DATASETS``)."""
    from datasets import DATASETS, yaml_path
    for spec in DATASETS.values():
        if spec.index == index:
            return yaml_path(spec)
    raise ConfigError(f"-d {index}: choose one of " +
                      ', '.join(f"{spec.index} ({spec.name})" for spec in DATASETS.values()))


def parse_epsilon(value, where):
    """An attack strength in pixel units (``8/255``, ``0.03``; :func:`read_fraction`), at most
    ``MAX_EPSILON``, as a float."""
    number = read_fraction(value, where)
    if number > MAX_EPSILON:
        raise ConfigError(f"{where}: {show(value)} is more than {MAX_EPSILON} (attack strengths are "
                          f"in pixel units; images are in [0, 1])")
    return float(number)


def parse_override(text):
    """``SECTION.KEY=VALUE`` (``KEY`` may be dotted, e.g. ``Layers.conv_1.threshold``) ->
    ``(path list, value)``; the value is read as YAML (``1e-3``, ``true``, ``[2/255]``, ``null``)."""
    name, sep, raw = text.partition('=')
    path = name.strip().split('.')
    flag = f"--set {show(text, 80)}"
    if not sep or len(path) < 2 or not all(path):
        raise ConfigError(f"{flag}: expected SECTION.KEY=VALUE, e.g. Network.epochs=5")
    if path[0] not in SECTIONS:
        raise ConfigError(f"{flag}: unknown section {show(path[0])} (one of {', '.join(SECTIONS)})")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except ConfigError as exc:
        raise ConfigError(f"{flag}: the value is {exc}") from None
    return path, value


def apply_overrides(cfg, overrides):
    for text in overrides:
        path, value = parse_override(text)
        if cfg.get(path[0]) is None:  # an absent or empty (null) section
            cfg[path[0]] = {}
        node = cfg
        for depth, key in enumerate(path[:-1]):
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"--set {show(text, 80)}: {'.'.join(path[:depth + 1])} is not a "
                                  f"section (it is {show(node.get(key))})")
            node = node[key]
        node[path[-1]] = value


def load_config(path, overrides=()):
    """Read, override, fill defaults and validate. Returns ``(config, warnings)``; raises
    ConfigError with the file's name in front of the message."""
    try:
        with open(path, 'rb') as f:  # bytes: YAML itself decodes UTF-8/16 and names bad bytes
            data = f.read(MAX_CONFIG_BYTES + 1)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        raise ConfigError(f"{path}: cannot read the config "
                          f"({getattr(exc, 'strerror', None) or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 10} KiB; not a config file")
    try:
        cfg = parse_yaml(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping with sections {', '.join(SECTIONS)}")
    try:
        apply_overrides(cfg, overrides)
        return resolve(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def resolve(raw):
    """Fill the defaults and validate every section; returns ``(config, warnings)``. The sections
    are resolved in this order (DEFAULT, Network, Layers, ATTACK), each by its function, then the
    checks that span sections; the first error found is the one raised."""
    cfg, warnings = check_sections(raw)
    warnings += resolve_default(cfg)
    settings, more = resolve_network(cfg)
    warnings += more
    warnings += resolve_layers(cfg, settings)
    warnings += resolve_attack(cfg, settings)
    check_across_sections(cfg)
    return cfg, warnings


def check_sections(raw):
    """A copy of ``raw`` with every section a mapping (DEFAULT and ATTACK may be absent or null),
    and the warnings about unknown sections."""
    cfg = copy.deepcopy(raw)
    warnings = [f"unknown section {show(name)} (ignored)" for name in cfg if name not in SECTIONS]
    for section in ('Network', 'Layers'):
        if cfg.get(section) is None:
            raise ConfigError(f"section {section} is required")
    for section in ('DEFAULT', 'ATTACK'):
        if cfg.get(section) is None:
            cfg[section] = {}
    for section in SECTIONS:
        if not isinstance(cfg[section], dict):
            raise ConfigError(f"section {section} must be a mapping, got {show(cfg[section])}")
    return cfg, warnings


def resolve_default(cfg):
    """DEFAULT: what the run does, sample counts, seed, dtype, model selection, checkpoint."""
    default = cfg['DEFAULT']
    for key, value in DEFAULT_DEFAULTS.items():
        default.setdefault(key, value)
    warnings = [f"unknown key DEFAULT.{key} (ignored)" for key in default if key not in DEFAULT_DEFAULTS]
    check_run_modes(cfg)
    for key in SAMPLE_COUNT_KEYS['DEFAULT']:
        default[key] = get_sample_count(default, key, 'DEFAULT', optional=True)
    get_number(default, 'seed', 'DEFAULT', integer=True, minimum=0, maximum=MAX_SEED)
    get_choice(default, 'dtype', 'DEFAULT', DTYPES)
    get_choice(default, 'select', 'DEFAULT', SELECT_METRICS)
    get_number(default, 'val_samples', 'DEFAULT', positive=True, integer=True)
    if default['select'] == 'robust' and default['train_samples'] is not None \
            and default['val_samples'] >= default['train_samples']:
        raise ConfigError(f"DEFAULT.val_samples ({default['val_samples']}) must be below "
                          f"DEFAULT.train_samples ({default['train_samples']}): the validation "
                          f"images are held out of the training images")
    resolve_checkpoint(default)
    if default['advtest'] and not default['cleantrain'] and not default['advtrain'] \
            and default['ckpt'] is None:
        warnings.append("DEFAULT.advtest without training or DEFAULT.ckpt evaluates an untrained network")
    return warnings


def check_run_modes(cfg):
    """DEFAULT.cleantrain, advtrain, advtest (booleans): not both trainings, and something to do
    (Network.save_target alone records an NDS)."""
    default = cfg['DEFAULT']
    for key in ('cleantrain', 'advtrain', 'advtest'):
        get_bool(default, key, 'DEFAULT')
    if default['cleantrain'] and default['advtrain']:
        raise ConfigError("DEFAULT.cleantrain and DEFAULT.advtrain are both true: choose one "
                          "(advtrain starts from DEFAULT.ckpt when given)")
    if not (default['cleantrain'] or default['advtrain'] or default['advtest']
            or cfg['Network'].get('save_target')):
        raise ConfigError("nothing to do: DEFAULT.cleantrain, advtrain, advtest and "
                          "Network.save_target are all false")


def resolve_checkpoint(default):
    """DEFAULT.ckpt: null or an existing file, resolved (``paths.resolve_input_path``)."""
    if default['ckpt'] is None:
        return
    if not isinstance(default['ckpt'], str) or '\0' in default['ckpt']:
        raise ConfigError(f"DEFAULT.ckpt must be a file path or null, got {show(default['ckpt'])}")
    default['ckpt'] = resolve_input_path(default['ckpt'])
    if not os.path.isfile(default['ckpt']):
        raise ConfigError(f"DEFAULT.ckpt: checkpoint '{default['ckpt']}' does not exist")


def resolve_network(cfg):
    """Network: the neuron and training settings (``NetworkSettings``), returned with the
    warnings, and the data set, which must be a registry entry with ``n_class`` classes."""
    network = cfg['Network']
    # The gradient the training step follows: the published backward (default, SPEC §4) or a BPTT
    # path (layers/bptt.py); validated by NetworkSettings, recorded under its full name
    # (bptt:sigmoid -> bptt:sigmoid:5) so that the resolved config says which sharpness ran.
    network.setdefault('train_gradient', PUBLISHED_GRADIENT)
    settings = network_settings(network)  # also checks that ckpt_v is a path or null
    network['train_gradient'] = gradient_path_name(settings.train_gradient)
    network['ckpt_v'] = resolve_input_path(settings.ckpt_v)
    settings = dataclasses.replace(settings, ckpt_v=network['ckpt_v'])
    get_number(network, 'epochs', 'Network', integer=True, minimum=0, maximum=MAX_EPOCHS)
    for key in SAMPLE_COUNT_KEYS['Network']:
        network[key] = get_sample_count(network, key, 'Network')
    get_number(network, 'lr', 'Network', positive=True)
    get_number(network, 'mean', 'Network')
    get_number(network, 'std', 'Network', positive=True, minimum=MIN_STD)
    spec = dataset_spec(network)
    # (epochs 0 trains nothing; its T_max is never used but must still be a valid period)
    # (by the YAML's loss, not settings.loss: the ANN twin, which always trains on cross-entropy,
    # keeps its spiking twin's schedule and threat model)
    network.setdefault('T_max', PUBLISHED_KERNEL_T_MAX if network['loss'] == 'kernel'
                       else max(network['epochs'], 1))
    get_number(network, 'T_max', 'Network', positive=True)
    if settings.n_class != spec.n_class:
        raise ConfigError(f"Network.n_class is {settings.n_class} but {spec.name} has "
                          f"{spec.n_class} classes")
    return settings, [f"unknown key Network.{key} (ignored)" for key in network
                      if key not in NETWORK_KEYS | PUBLISHED_UNUSED_KEYS]


def dataset_spec(network):
    """Network.dataset (a name in the data-set registry) -> its ``DatasetSpec``; checks
    Network.data_path too."""
    from datasets import DATASETS  # deferred: config parsing must not need torchvision eagerly
    spec = DATASETS[get_choice(network, 'dataset', 'Network', tuple(DATASETS))]
    if not isinstance(network.get('data_path'), str) or '\0' in network['data_path']:
        raise ConfigError(f"Network.data_path must be a directory path, got "
                          f"{show(network.get('data_path'))}")
    return spec


def resolve_layers(cfg, settings):
    """Layers: valid layers on the data set's images, of a sane size, that suit the neuron (the
    ANN records no NDS; TA-LIF layers find theirs in Network.ckpt_v). Returns the warnings."""
    layers = cfg['Layers']
    if len(layers) > MAX_LAYERS:
        raise ConfigError(f"Layers: {len(layers)} layers, at most {MAX_LAYERS}")
    for name in layers:
        if not isinstance(name, str):
            raise ConfigError(f"Layers: layer names are text, got {show(name)}")
    plan = layer_shapes(layers, input_shape(cfg))
    check_sizes(cfg, settings, plan, input_shape(cfg))
    warnings = [f"unknown key {key} (ignored)" for key in unknown_layer_keys(layers)]
    if settings.model == ANN:
        if settings.save_target:
            raise ConfigError("Network.save_target: the ANN (Network.model ANN) has no membrane "
                              "potential to record an NDS from; set it false")
        if settings.ckpt_v is not None:
            warnings.append("Network.ckpt_v is ignored by the ANN (it has no NDS)")
    if settings.adaptive:
        if settings.ckpt_v is not None:
            check_nds_file(settings, plan)
        else:
            warnings.append(CodedWarning(
                RANDOM_NDS, "Network.model is ALIF but Network.ckpt_v is null: the TA-LIF layers use "
                "the published random NDS (U(0,1) conv, 0.5 linear), not a recorded one"))
    return warnings


def resolve_attack(cfg, settings):
    """ATTACK: the test and training strengths, the training attack and its gradient, clamping,
    the adversarial-training keys. Returns the warnings."""
    attack = cfg['ATTACK']
    attack.setdefault('strength', [])
    attack.setdefault('train', [])
    attack.setdefault('ft_method', 'fgm')
    # the published CIFAR100 code clamped
    attack.setdefault('clamp', cfg['Network']['loss'] == 'softmax')
    warnings = [f"unknown key ATTACK.{key} (ignored)" for key in attack if key not in ATTACK_KEYS]
    for key in ('strength', 'train'):
        if not isinstance(attack[key], list):
            raise ConfigError(f"ATTACK.{key} must be a list such as [8/255], got {show(attack[key])}")
        if len(attack[key]) > MAX_EPSILONS:
            raise ConfigError(f"ATTACK.{key} has {len(attack[key])} entries, at most {MAX_EPSILONS}")
        for index, value in enumerate(attack[key]):
            parse_epsilon(value, f"ATTACK.{key}[{index}]")
    get_choice(attack, 'ft_method', 'ATTACK', FT_METHODS)
    resolve_ft_gradient(attack, settings)
    get_bool(attack, 'clamp', 'ATTACK')
    check_adversarial_training_keys(attack)
    return warnings


def resolve_ft_gradient(attack, settings):
    """ATTACK.ft_gradient, the gradient that crafts adversarial training examples: the published
    backward (default, SPEC §4) or a BPTT path through membrane, reset and threshold
    (layers/bptt.py); the ANN has no spikes, so only the published one."""
    attack.setdefault('ft_gradient', PUBLISHED_GRADIENT)
    try:
        path = parse_gradient_path(attack['ft_gradient'])
    except ValueError as exc:
        raise ConfigError(f"ATTACK.ft_gradient: {exc}") from None
    if settings.model == ANN and path is not None:
        raise ConfigError(f"ATTACK.ft_gradient: {show(attack['ft_gradient'])} chooses a spike "
                          f"surrogate, but the ANN has no spikes (its gradient is plain autograd); "
                          f"leave it {PUBLISHED_GRADIENT!r}")


def check_across_sections(cfg):
    """What DEFAULT asks of ATTACK: adversarial training and robust selection need ATTACK.train.
    (The other checks that read two sections run with the section that owns the key:
    check_run_modes, resolve_network's n_class, resolve_layers, resolve_ft_gradient.)"""
    default, attack = cfg['DEFAULT'], cfg['ATTACK']
    if default['advtrain'] and not attack['train']:
        raise ConfigError("DEFAULT.advtrain needs ATTACK.train, e.g. [2/255]")
    if default['select'] == 'robust' and (default['cleantrain'] or default['advtrain']) \
            and not attack['train']:
        raise ConfigError("DEFAULT.select: robust selects by PGD accuracy at ATTACK.train[0]; set "
                          "ATTACK.train, e.g. [2/255]")


def check_adversarial_training_keys(attack):
    """The keys of ATTACK.ft_method pgd_rs and trades (defaults filled in): ``ft_steps``,
    ``ft_step_size`` (pixel units like eps; null = 2.5 eps / ft_steps), ``trades_beta``,
    ``ft_eps_ramp_epochs`` (0 = no ramp)."""
    attack.setdefault('ft_steps', FT_STEPS_DEFAULT)
    attack.setdefault('ft_step_size', None)
    attack.setdefault('trades_beta', TRADES_BETA_DEFAULT)
    attack.setdefault('ft_eps_ramp_epochs', 0)
    get_number(attack, 'ft_steps', 'ATTACK', positive=True, integer=True, maximum=MAX_FT_STEPS)
    if attack['ft_step_size'] is not None:
        if parse_epsilon(attack['ft_step_size'], 'ATTACK.ft_step_size') <= 0:
            raise ConfigError(f"ATTACK.ft_step_size must be positive (pixel units, e.g. 1/255) or "
                              f"null (2.5 eps / ft_steps), got {show(attack['ft_step_size'])}")
    get_number(attack, 'trades_beta', 'ATTACK', minimum=0)
    get_number(attack, 'ft_eps_ramp_epochs', 'ATTACK', integer=True, minimum=0,
               maximum=MAX_EPOCHS)


def check_sizes(cfg, settings, plan, in_shape):
    """Refuse, before anything is allocated, a network whose weights, or one batch's layer outputs
    over all time steps, need far more memory than any machine has. ``plan`` is layer_shapes()'s
    (the layers are valid)."""
    default, network = cfg['DEFAULT'], cfg['Network']
    weights, outputs, shape = 0, math.prod(in_shape), tuple(in_shape)
    for name, kind, out_shape in plan:
        if kind == 'conv':
            kh, kw = get_pair(cfg['Layers'][name], 'kernel_size', f"Layers.{name}")
            weights += out_shape[0] * shape[0] * kh * kw
        elif kind == 'linear':
            weights += out_shape[0] * math.prod(shape)
        if settings.adaptive and kind in ('conv', 'linear') and name != 'output':
            weights += math.prod(out_shape) * (1 + settings.n_steps)  # theta_v and the NDS
        outputs += math.prod(out_shape)
        shape = out_shape
    if weights > MAX_PARAMETERS:
        raise ConfigError(f"Layers: the network would have {weights:,} weight elements (at most "
                          f"{MAX_PARAMETERS:,}); the layers are far too large")
    # The loaders' batches are never larger than the data set (when both sample counts cap it).
    batch = network['batch_size']
    if default['train_samples'] is not None and default['test_samples'] is not None:
        batch = min(batch, max(default['train_samples'], default['test_samples']))
    elements = batch * settings.n_steps * outputs
    if elements > MAX_BATCH_ELEMENTS:
        raise ConfigError(f"Network.batch_size: a batch of {batch} samples x {settings.n_steps} "
                          f"time steps x {outputs:,} layer outputs is {elements:,} elements (at "
                          f"most {MAX_BATCH_ELEMENTS:,}); lower batch_size or n_steps")


def check_nds_file(settings, plan):
    """Every TA-LIF layer (spiking conv/linear but ``output``) must find its NDS, of shape
    ``out_shape + [T]``, in ``Network.ckpt_v`` (layers/nds.py, as Network.load_nds)."""
    check_nds(read_nds_file(settings.ckpt_v), nds_shapes(plan, settings.n_steps),
              nds_source(settings.ckpt_v))


def attack_strengths(cfg):
    """The test-time eps list, in pixel units, as floats."""
    return [parse_epsilon(v, f"ATTACK.strength[{i}]") for i, v in enumerate(cfg['ATTACK']['strength'])]


def train_epsilon(cfg):
    return parse_epsilon(cfg['ATTACK']['train'][0], 'ATTACK.train[0]')


def input_shape(cfg):
    from datasets import DATASETS
    return DATASETS[cfg['Network']['dataset']].input_shape


def dump_config(cfg):
    """The resolved config as YAML text (saved next to every checkpoint)."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
