"""Experiment configuration: the published YAML schema (``DEFAULT``, ``Network``, ``ATTACK``,
``Layers``), ``--set`` overrides, defaults for the keys this project adds, and validation of all of
it before anything runs. Every error is a ``ConfigError`` whose one-line message names the file and
the key."""
import copy
import os
import re
from fractions import Fraction

import yaml

from layers import ConfigError, NetworkSettings, layer_shapes, read_nds_file, unknown_layer_keys
from layers.config_keys import get_bool, get_choice, get_number
from attack import FT_METHODS  # ATTACK.ft_method: the attacks of usage 'train' (attack.ATTACKS)
from paths import PROJECT_ROOT, resolve_input_path

SECTIONS = ('DEFAULT', 'Network', 'ATTACK', 'Layers')
DTYPES = ('float32', 'float64')

# Keys this project adds get defaults that reproduce the published behaviour when absent.
DEFAULT_DEFAULTS = {'cleantrain': True, 'advtrain': False, 'advtest': True, 'ckpt': None,
                    'train_samples': None, 'test_samples': None, 'seed': 0, 'dtype': 'float32'}
NETWORK_KEYS = {'epochs', 'model', 'tau_v', 'ckpt_v', 'batch_size', 'lr', 'T_max', 'is_bn',
                'save_target', 'n_steps', 'data_path', 'mean', 'std', 'dataset', 'loss', 'n_class',
                'tau_m', 'tau_s'}
# Carried by the published YAMLs but read by nothing (TSSL-BP leftovers): accepted silently.
PUBLISHED_UNUSED_KEYS = {'desired_count', 'undesired_count', 'rule'}
ATTACK_KEYS = {'strength', 'train', 'ft_method', 'clamp'}
# The published kernel-loss code (MNIST/CIFAR10) fixed the cosine period at 200 epochs; the softmax
# code (CIFAR100) used the number of epochs.
PUBLISHED_KERNEL_T_MAX = 200

_NUMBER = r'(?:\d+(?:\.\d*)?|\.\d+)'
_EPSILON = re.compile(rf'^\s*({_NUMBER})\s*(?:/\s*({_NUMBER})\s*)?$')


def config_path_for_dataset(index):
    """``-d N`` -> ``networks/<name>.yaml``, by the data-set registry (``datasets.DATASETS``)."""
    from datasets import DATASETS, yaml_path
    for spec in DATASETS.values():
        if spec.index == index:
            return yaml_path(spec)
    raise ConfigError(f"-d {index}: choose one of " +
                      ', '.join(f"{spec.index} ({spec.name})" for spec in DATASETS.values()))


def parse_epsilon(value, where):
    """An attack strength in pixel units: a number or an exact fraction string such as ``8/255``
    (parsed with ``fractions``, never ``eval``)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a number or a fraction such as 8/255")
    if isinstance(value, (int, float)):
        number = Fraction(value)
    else:
        match = _EPSILON.match(str(value))
        if not match:
            raise ConfigError(f"{where}: {value!r} is not a number or a fraction such as 8/255")
        number = Fraction(match.group(1))
        if match.group(2) is not None:
            if Fraction(match.group(2)) == 0:
                raise ConfigError(f"{where}: {value!r} divides by zero")
            number /= Fraction(match.group(2))
    if number < 0:
        raise ConfigError(f"{where}: {value!r} must not be negative")
    return float(number)


def parse_override(text):
    """``SECTION.KEY=VALUE`` (``KEY`` may be dotted, e.g. ``Layers.conv_1.threshold``) ->
    ``(path list, value)``; the value is read as YAML (``1e-3``, ``true``, ``[2/255]``, ``null``)."""
    name, sep, raw = text.partition('=')
    path = name.strip().split('.')
    if not sep or len(path) < 2 or not all(path):
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. Network.epochs=5")
    if path[0] not in SECTIONS:
        raise ConfigError(f"--set {text!r}: unknown section {path[0]!r} (one of {', '.join(SECTIONS)})")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML "
                          f"({str(exc).splitlines()[0]})") from None
    return path, value


def apply_overrides(cfg, overrides):
    for text in overrides:
        path, value = parse_override(text)
        node = cfg.setdefault(path[0], {})
        for key in path[1:-1]:
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(path[:-1])} is not a section")
            node = node[key]
        node[path[-1]] = value


def load_config(path, overrides=()):
    """Read, override, fill defaults and validate. Returns ``(config, warnings)``; raises
    ConfigError with the file's name in front of the message."""
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping with sections {', '.join(SECTIONS)}")
    try:
        apply_overrides(cfg, overrides)
        return resolve(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def resolve(raw):
    """Fill the defaults and validate every section; returns ``(config, warnings)``."""
    from datasets import INPUT_SHAPES, N_CLASSES  # deferred: config parsing must not need torchvision eagerly

    cfg = copy.deepcopy(raw)
    warnings = [f"unknown section {name!r} (ignored)" for name in cfg if name not in SECTIONS]
    for section in ('Network', 'Layers'):
        if not isinstance(cfg.get(section), dict):
            raise ConfigError(f"section {section} is required")
    for section in ('DEFAULT', 'ATTACK'):
        cfg[section] = cfg.get(section) or {}
        if not isinstance(cfg[section], dict):
            raise ConfigError(f"section {section} must be a mapping")

    default = cfg['DEFAULT']
    for key, value in DEFAULT_DEFAULTS.items():
        default.setdefault(key, value)
    warnings += [f"unknown key DEFAULT.{key} (ignored)" for key in default if key not in DEFAULT_DEFAULTS]
    for key in ('cleantrain', 'advtrain', 'advtest'):
        get_bool(default, key, 'DEFAULT')
    if default['cleantrain'] and default['advtrain']:
        raise ConfigError("DEFAULT.cleantrain and DEFAULT.advtrain are both true: choose one "
                          "(advtrain starts from DEFAULT.ckpt when given)")
    if not (default['cleantrain'] or default['advtrain'] or default['advtest']
            or cfg['Network'].get('save_target')):
        raise ConfigError("nothing to do: DEFAULT.cleantrain, advtrain, advtest and "
                          "Network.save_target are all false")
    for key in ('train_samples', 'test_samples'):
        get_number(default, key, 'DEFAULT', default=None, positive=True, integer=True)
    get_number(default, 'seed', 'DEFAULT', integer=True, minimum=0)
    get_choice(default, 'dtype', 'DEFAULT', DTYPES)
    if default['ckpt'] is not None:
        if not isinstance(default['ckpt'], str):
            raise ConfigError(f"DEFAULT.ckpt must be a file path or null, got {default['ckpt']!r}")
        default['ckpt'] = resolve_input_path(default['ckpt'])
        if not os.path.isfile(default['ckpt']):
            raise ConfigError(f"DEFAULT.ckpt: checkpoint '{default['ckpt']}' does not exist")
    if default['advtest'] and not default['cleantrain'] and not default['advtrain'] \
            and default['ckpt'] is None:
        warnings.append("DEFAULT.advtest without training or DEFAULT.ckpt evaluates an untrained network")

    network = cfg['Network']
    if network.get('ckpt_v'):
        network['ckpt_v'] = resolve_input_path(network['ckpt_v'])
    settings = NetworkSettings.from_config(network)
    get_number(network, 'epochs', 'Network', integer=True, minimum=0)
    get_number(network, 'batch_size', 'Network', positive=True, integer=True)
    get_number(network, 'lr', 'Network', positive=True)
    get_number(network, 'mean', 'Network')
    get_number(network, 'std', 'Network', positive=True)
    dataset = get_choice(network, 'dataset', 'Network', tuple(INPUT_SHAPES))
    if not isinstance(network.get('data_path'), str):
        raise ConfigError(f"Network.data_path must be a directory path, got {network.get('data_path')!r}")
    network.setdefault('T_max', PUBLISHED_KERNEL_T_MAX if settings.loss == 'kernel' else network['epochs'])
    get_number(network, 'T_max', 'Network', positive=True)
    if settings.n_class != N_CLASSES[dataset]:
        raise ConfigError(f"Network.n_class is {settings.n_class} but {dataset} has "
                          f"{N_CLASSES[dataset]} classes")
    warnings += [f"unknown key Network.{key} (ignored)" for key in network
                 if key not in NETWORK_KEYS | PUBLISHED_UNUSED_KEYS]

    plan = layer_shapes(cfg['Layers'], INPUT_SHAPES[dataset])
    warnings += [f"unknown key {key} (ignored)" for key in unknown_layer_keys(cfg['Layers'])]
    if settings.adaptive:
        if settings.ckpt_v is not None:
            check_nds_file(settings, plan)
        else:
            warnings.append("Network.model is ALIF but Network.ckpt_v is null: the TA-LIF layers use "
                            "the published random NDS (U(0,1) conv, 0.5 linear), not a recorded one")

    attack = cfg['ATTACK']
    attack.setdefault('strength', [])
    attack.setdefault('train', [])
    attack.setdefault('ft_method', 'fgm')
    attack.setdefault('clamp', settings.loss == 'softmax')  # the published CIFAR100 code clamped
    warnings += [f"unknown key ATTACK.{key} (ignored)" for key in attack if key not in ATTACK_KEYS]
    for key in ('strength', 'train'):
        if not isinstance(attack[key], list):
            raise ConfigError(f"ATTACK.{key} must be a list such as [8/255], got {attack[key]!r}")
        for index, value in enumerate(attack[key]):
            parse_epsilon(value, f"ATTACK.{key}[{index}]")
    get_choice(attack, 'ft_method', 'ATTACK', FT_METHODS)
    get_bool(attack, 'clamp', 'ATTACK')
    if default['advtrain'] and not attack['train']:
        raise ConfigError("DEFAULT.advtrain needs ATTACK.train, e.g. [2/255]")
    return cfg, warnings


def check_nds_file(settings, plan):
    """Every TA-LIF layer (spiking conv/linear but ``output``) must find its NDS, of shape
    ``out_shape + [T]``, in ``Network.ckpt_v``."""
    nds = read_nds_file(settings.ckpt_v)
    for name, kind, out_shape in plan:
        if kind not in ('conv', 'linear') or name == 'output':
            continue
        expected = (*out_shape, settings.n_steps)
        if name not in nds:
            raise ConfigError(f"Network.ckpt_v ({settings.ckpt_v}) has no NDS for layer '{name}' "
                              f"(it has: {', '.join(nds) or 'nothing'})")
        if tuple(nds[name].shape) != expected:
            raise ConfigError(f"Network.ckpt_v ({settings.ckpt_v}): layer '{name}' NDS has shape "
                              f"{list(nds[name].shape)}, expected {list(expected)}")


def attack_strengths(cfg):
    """The test-time eps list, in pixel units, as floats."""
    return [parse_epsilon(v, f"ATTACK.strength[{i}]") for i, v in enumerate(cfg['ATTACK']['strength'])]


def train_epsilon(cfg):
    return parse_epsilon(cfg['ATTACK']['train'][0], 'ATTACK.train[0]')


def input_shape(cfg):
    from datasets import INPUT_SHAPES
    return INPUT_SHAPES[cfg['Network']['dataset']]


def dump_config(cfg):
    """The resolved config as YAML text (saved next to every checkpoint)."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
