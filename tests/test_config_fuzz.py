"""Config fuzzing: a few hundred seeded mutations of the shipped networks/*.yaml (wrong types, null,
NaN, infinities, huge, negative and zero values, strings, lists, mappings, removed keys and
sections, --set lines) and hostile YAML files (aliases, deep nesting, non-UTF-8 bytes). Loading and
building the network either succeeds or raises ConfigError -- never another exception -- and
every case is quick. Plus end-to-end runs through main.main: nasty input exits 2 with one line on
stderr, and --set reads 1e-3 as a number."""
import copy
import json
import os
import random
import time

import pytest
import torch
import yaml

import main
from config import PROJECT_ROOT, ConfigError, attack_strengths, input_shape, load_config
from errors import UserError
from conftest import SMALL_LAYERS, set_flags, write_mnist_dir
from layers import Network

NETWORKS = os.path.join(PROJECT_ROOT, 'networks')
BASES = ['MNIST', 'CIFAR10', 'CIFAR100', 'FashionMNIST', 'SVHN']
N_CASES = 300
CASE_SECONDS = 5  # far above the few milliseconds a case takes: a hang or a huge allocation
SMALL_NETWORK = 1_000_000  # weight elements below which the network is really built (else on meta)

DUMPER = getattr(yaml, 'CSafeDumper', yaml.SafeDumper)  # (libyaml: writing the cases is quick)
NASTY = [None, True, False, 0, -1, 1, 2, 0.5, -0.5, 1e-300, 1e308, -1e308, 10**6, 10**9, 10**12,
         2**63, 2**64, 10**30, 10**400, float('nan'), float('inf'), float('-inf'), '', 'x', 'LIF',
         'conv', '1e-3', '8/255', '1/0', 'nan', '-1', '\0', 'a' * 1000, [], [1], [1, 2], [0, 0],
         [1, 2, 3], ['8/255'], [float('nan')], [10**12], {}, {'a': 1}, {'type': 'conv'},
         [[[[1]]]], 5.0, 1000, 4096, 65536]


# Keys the shipped YAMLs leave out (defaults), and one nobody reads.
OPTIONAL_KEYS = {
    'DEFAULT': ['seed', 'train_samples', 'test_samples', 'dtype', 'ckpt', 'unknown_key'],
    'Network': ['T_max', 'tau_v', 'ckpt_v', 'unknown_key'],
    'ATTACK': ['clamp', 'ft_method', 'unknown_key'],
    'Layers': ['threshold', 'weight_scale', 'theta', 'stride', 'dilation', 'padding', 'p',
               'unknown_key'],
}


def load_base(name):
    with open(os.path.join(NETWORKS, f'{name}.yaml')) as f:
        return yaml.safe_load(f)


def scaled(value, rng):
    """A numeric neighbour or extreme of ``value``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return rng.choice(NASTY)
    return rng.choice([value * 10, value * 1000, -value, value + 1, value - 1, float(value),
                       value * 10**9, value / 1000, 0])


def mutate(cfg, rng):
    """One random change: a key's value, a removed key, a new key, or a whole section."""
    kind = rng.random()
    if kind < 0.08:  # a whole section
        section = rng.choice(['DEFAULT', 'Network', 'ATTACK', 'Layers'])
        if rng.random() < 0.3:
            cfg.pop(section, None)
        else:
            cfg[section] = rng.choice([None, 'x', [1], 5, {}])
        return
    section = rng.choice(['DEFAULT', 'Network', 'Network', 'ATTACK', 'Layers', 'Layers', 'Layers'])
    node = cfg.get(section)
    if not isinstance(node, dict) or not node:
        return
    if section == 'Layers':
        layer = rng.choice(list(node))
        if rng.random() < 0.1:
            node[layer] = rng.choice(NASTY)
            return
        node = node[layer]
        if not isinstance(node, dict) or not node:
            return
    key = rng.choice(list(node) + OPTIONAL_KEYS[section])
    roll = rng.random()
    if roll < 0.1:
        node.pop(key, None)
    elif roll < 0.45 and key in node:
        node[key] = scaled(node[key], rng)
    else:
        node[key] = rng.choice(NASTY)


def build(network_cfg, layers_cfg, shape, meta):
    if meta:
        with torch.device('meta'):
            return Network(network_cfg, layers_cfg, shape)
    return Network(network_cfg, layers_cfg, shape)


def check_case(path, overrides=(), raw=None):
    """load_config (+ Network) succeeds or raises ConfigError, quickly. ``raw``: also build the
    network straight from the mutated (unresolved) sections."""
    start = time.perf_counter()
    try:
        cfg, _ = load_config(path, overrides)
        # (load_config has checked the NDS file against the layers: not read again here)
        network = dict(cfg['Network'], ckpt_v=None)
        net = build(network, cfg['Layers'], input_shape(cfg), meta=True)
        if sum(p.numel() for p in net.parameters()) < SMALL_NETWORK:  # and really allocated
            build(network, cfg['Layers'], input_shape(cfg), meta=False)
        outcome = 'ok'
    except ConfigError as exc:
        message = str(exc)
        assert '\n' not in message and len(message) < 600, message
        outcome = 'error'
    if raw is not None and isinstance(raw.get('Network'), dict):
        network = dict(raw['Network'])
        if isinstance(network.get('ckpt_v'), str):
            network['ckpt_v'] = None
        shape = (3, 32, 32) if network.get('dataset') in ('CIFAR10', 'CIFAR100', 'SVHN') \
            else (1, 28, 28)
        try:
            build(network, raw.get('Layers'), shape, meta=True)
        except ConfigError:
            pass
    elapsed = time.perf_counter() - start
    assert elapsed < CASE_SECONDS, f"{path} {overrides}: {elapsed:.1f} s"
    return outcome


def test_mutated_yamls_load_or_fail_with_a_config_error(tmp_path, monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)  # the published relative ckpt_v, also for the raw sections
    rng = random.Random(20240612)
    bases = {name: load_base(name) for name in BASES}
    outcomes = []
    for case in range(N_CASES):
        cfg = copy.deepcopy(bases[rng.choice(BASES)])
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            mutate(cfg, rng)
        path = tmp_path / f'case_{case}.yaml'
        path.write_text(yaml.dump(cfg, Dumper=DUMPER, sort_keys=False, allow_unicode=True))
        outcomes.append(check_case(str(path), raw=cfg))
    # The mutations are not all rejected (the fuzzer also reaches the network builder) nor all
    # accepted (most are nonsense).
    assert 0.02 * N_CASES < outcomes.count('ok') < 0.6 * N_CASES, outcomes.count('ok')


SET_KEYS = ['DEFAULT.seed', 'DEFAULT.train_samples', 'DEFAULT.dtype', 'DEFAULT.ckpt',
            'DEFAULT.cleantrain', 'Network.lr', 'Network.epochs', 'Network.n_steps',
            'Network.batch_size', 'Network.tau_s', 'Network.tau_m', 'Network.tau_v',
            'Network.ckpt_v', 'Network.mean', 'Network.std', 'Network.T_max', 'Network.model',
            'ATTACK.strength', 'ATTACK.train', 'ATTACK.clamp', 'Layers.conv_1.threshold',
            'Layers.conv_1.kernel_size', 'Layers.conv_1.out_channels', 'Layers.conv_1.padding',
            'Layers.conv_1.weight_scale', 'Layers.pooling_1.theta', 'Layers.pooling_1.stride',
            'Layers.FC_1.n_outputs', 'Layers.output', 'Layers.conv_1.x.y', 'Layers', 'DEFAULT']
SET_VALUES = ['1e-3', '1E5', '-1e-3', '.5', '1e999', '-.inf', '.nan', '.inf', '1e12', '10000000',
              '18446744073709551616', '1' * 5000, 'null', '~', 'true', '[]', '[1e-2]', '[.nan]',
              '{a: 1}', '"x"', '0', '-1', '0x10', '0o7', '2001-01-01', '[' * 2000, '*a', '&a 1',
              '!!python/object:os.system x', '!!binary AAAA', '{', ': :', '']


def test_mutated_set_lines_load_or_fail_with_a_config_error():
    rng = random.Random(7)
    for _ in range(150):
        base = os.path.join(NETWORKS, f'{rng.choice(["MNIST", "FashionMNIST", "CIFAR10"])}.yaml')
        overrides = [f'{rng.choice(SET_KEYS)}={rng.choice(SET_VALUES)}'
                     for _ in range(rng.choice([1, 1, 2]))]
        check_case(base, overrides)


def hostile_files(tmp_path):
    laughs = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]'] + [
        f'a{i}: &a{i} [' + ', '.join([f'*a{i - 1}'] * 10) + ']' for i in range(1, 12)]
    files = {
        'billion_laughs': '\n'.join(laughs) + '\nNetwork: *a11\n',
        'deep_flow': 'Network: ' + '[' * 5000 + ']' * 5000 + '\n',
        'deep_block': ''.join(' ' * i + f'k{i}:\n' for i in range(1000)),
        'not_utf8': b'Network:\n  lr: \xff\xfe\x00\x01\n',
        'nul': b'Network: {lr: 1}\x00\n',
        'huge_int': 'Network:\n  epochs: ' + '9' * 10000 + '\n',
        'tabs': 'Network:\n\tlr: 1\n',
        'list': '- 1\n- 2\n',
        'empty': '',
        'two_documents': 'Network: {}\n---\nLayers: {}\n',
        'python_tag': 'Network: !!python/object/apply:os.system ["true"]\n',
        'big': 'x: ' + 'a' * (2 << 20) + '\n',
        'date': (open(os.path.join(NETWORKS, 'MNIST.yaml')).read()
                 .replace('lr: 0.0005', 'lr: 2001-01-01')),
    }
    paths = {}
    for name, text in files.items():
        path = tmp_path / f'{name}.yaml'
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        paths[name] = str(path)
    return paths


def test_hostile_yaml_files(tmp_path):
    paths = hostile_files(tmp_path)
    for name, path in paths.items():
        with pytest.raises(ConfigError) as info:
            check_case(path)
            load_config(path)  # (check_case swallows the ConfigError: raise it again)
        assert str(info.value).startswith(path + ': '), name
    with pytest.raises(ConfigError, match='aliases'):
        load_config(paths['billion_laughs'])
    with pytest.raises(ConfigError, match='nested deeper'):
        load_config(paths['deep_flow'])
    with pytest.raises(ConfigError, match='not UTF-8'):
        load_config(paths['not_utf8'])
    with pytest.raises(ConfigError, match='Network.lr must be a number'):
        load_config(paths['date'])
    with pytest.raises(ConfigError, match='cannot read'):
        load_config(str(tmp_path))  # a directory
    with pytest.raises(ConfigError, match='larger than'):
        load_config(paths['big'])


@pytest.mark.parametrize('override', ['Network.lr=1e-3', 'Network.lr=5E-4', 'Network.epochs=1e1',
                                      'ATTACK.strength=[1e-2, 2.5e-2]'])
def test_scientific_notation_is_a_number(override):
    cfg, _ = load_config(os.path.join(NETWORKS, 'MNIST.yaml'), [override])
    key, value = override.split('=')
    section, name = key.split('.')
    expected = {'Network.lr=1e-3': 0.001, 'Network.lr=5E-4': 0.0005, 'Network.epochs=1e1': 10.0,
                'ATTACK.strength=[1e-2, 2.5e-2]': [0.01, 0.025]}[override]
    assert cfg[section][name] == expected


def test_integers_and_strings_are_unchanged():
    """The extra float pattern only adds exponents: ints, dotted floats, fractions and names read
    as before."""
    from config import parse_yaml
    assert parse_yaml('[5, -3, 0x10, 1.5, 1.0e+3, .5, 8/255, 1e, e5, 1_000, "1e-3", .inf]') == [
        5, -3, 16, 1.5, 1000.0, 0.5, '8/255', '1e', 'e5', 1000, '1e-3', float('inf')]


# --- end to end through main ---------------------------------------------------------------------

SMALL = SMALL_LAYERS + ['Network.model=LIF', 'Network.ckpt_v=null', 'DEFAULT.train_samples=16',
                        'DEFAULT.test_samples=8', 'Network.batch_size=8', 'Network.epochs=1']


@pytest.fixture(scope='module')
def mnist_dir(tmp_path_factory):
    return write_mnist_dir(tmp_path_factory, 16, 8)


def run(mnist_dir, out, *sets, config=None):
    args = ['--config', config] if config else ['-d', '0']
    return main.main([*args, *set_flags([f'Network.data_path={mnist_dir}', *SMALL, *sets]),
                      '--out', out])


@pytest.mark.parametrize('sets', [
    ['Network.lr=.nan'], ['Network.epochs=1e12'], ['Network.n_steps=1000000'],
    ['DEFAULT.seed=18446744073709551616'], ['Network.tau_s=1e-300'], ['Network.ckpt_v=[1]'],
    ['ATTACK.strength=[.inf]'], ['Layers.conv_1.threshold=0'], ['Layers.pooling_1.theta=-1'],
    ['Network.batch_size=1000000000', 'DEFAULT.train_samples=null'], ['Layers.conv_1=5'],
    ['DEFAULT.x.y=1'],
    ['Layers.conv_1.out_channels=1000000000'], ['Network.x=' + '[' * 3000], ['Network.x=*a']])
def test_nasty_sets_exit_2_with_one_line(mnist_dir, tmp_path, capsys, sets):
    assert run(mnist_dir, str(tmp_path / 'run'), *sets) == UserError.exit_status
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err
    assert not os.path.exists(tmp_path / 'run')  # refused before anything was written


def test_hostile_config_files_exit_2_with_one_line(mnist_dir, tmp_path, capsys):
    for name, path in hostile_files(tmp_path).items():
        assert main.main(['--config', path]) == UserError.exit_status, name
        err = capsys.readouterr().err
        assert err.startswith('error: ') and err.count('\n') == 1, (name, err)


def test_set_reads_scientific_notation_end_to_end(mnist_dir, tmp_path):
    out = str(tmp_path / 'run')
    assert run(mnist_dir, out, 'Network.lr=1e-3', 'ATTACK.strength=[1e-2]',
               'DEFAULT.advtest=false') == 0
    with open(os.path.join(out, 'results.json')) as f:
        assert [epoch['epoch'] for epoch in json.load(f)['epochs']] == [0]
    cfg, _ = load_config(os.path.join(out, 'config.yaml'))  # the config the run used
    assert cfg['Network']['lr'] == 0.001 and attack_strengths(cfg) == [0.01]
