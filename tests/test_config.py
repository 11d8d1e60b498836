"""The config loader: published YAMLs load, bad input is a one-line error naming file and key,
epsilons are exact fractions, full-size networks have the released state-dict layout."""
import os

import pytest
import torch
import yaml

from config import PROJECT_ROOT, ConfigError, load_config, parse_epsilon, parse_override
from conftest import load_golden
from layers import Network

NETWORKS = os.path.join(PROJECT_ROOT, 'networks')
YAMLS = ['MNIST', 'CIFAR10', 'CIFAR100', 'FashionMNIST', 'SVHN']


def write_config(tmp_path, edit, base='MNIST'):
    """networks/<base>.yaml changed by ``edit(cfg)``, written to tmp_path."""
    with open(os.path.join(NETWORKS, f'{base}.yaml')) as f:
        cfg = yaml.safe_load(f)
    edit(cfg)
    path = tmp_path / 'bad.yaml'
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def config_error(tmp_path, edit, base='MNIST'):
    path = write_config(tmp_path, edit, base)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(path + ': ') and '\n' not in message
    return message


@pytest.mark.parametrize('name', YAMLS)
def test_shipped_configs_load(name):
    cfg, warnings = load_config(os.path.join(NETWORKS, f'{name}.yaml'))
    assert set(cfg) == {'DEFAULT', 'Network', 'ATTACK', 'Layers'}
    assert not [w for w in warnings if 'unknown' in w]


def test_published_values():
    """SPEC §9, key by key."""
    expect = {
        'MNIST': dict(epochs=101, batch_size=64, lr=5e-4, model='ALIF', tau_v=1.5, is_bn=False,
                      n_steps=5, tau_m=5, tau_s=3, mean=0.1307, std=0.3081, loss='kernel',
                      n_class=10, T_max=200),
        'CIFAR10': dict(epochs=201, batch_size=64, lr=5e-4, model='ALIF', tau_v=5, is_bn=True,
                        n_steps=5, tau_m=5, tau_s=3, mean=0.4734, std=0.2009, loss='kernel',
                        n_class=10, T_max=200),
        'CIFAR100': dict(epochs=201, batch_size=64, lr=2e-4, model='ALIF', tau_v=5, is_bn=True,
                         n_steps=5, tau_m=5, tau_s=3, mean=0.4782, std=0.2666, loss='softmax',
                         n_class=100, T_max=201),
    }
    attacks = {'MNIST': (['1/10', '2/10', '3/10', '4/10'], ['1/10'], False),
               'CIFAR10': (['8/255'], ['2/255'], False), 'CIFAR100': (['8/255'], ['4/255'], True)}
    for name, values in expect.items():
        cfg, _ = load_config(os.path.join(NETWORKS, f'{name}.yaml'))
        assert {k: cfg['Network'][k] for k in values} == values, name
        strength, train, clamp = attacks[name]
        assert cfg['ATTACK']['strength'] == strength and cfg['ATTACK']['train'] == train
        assert cfg['ATTACK']['ft_method'] == 'fgm' and cfg['ATTACK']['clamp'] is clamp


def test_published_yaml_without_project_keys_gets_published_defaults(tmp_path):
    def strip(cfg):
        del cfg['Network']['T_max']
        cfg['ATTACK'].pop('clamp', None)
    cfg, _ = load_config(write_config(tmp_path, strip, 'CIFAR100'))
    assert cfg['Network']['T_max'] == 201 and cfg['ATTACK']['clamp'] is True
    cfg, _ = load_config(write_config(tmp_path, strip, 'CIFAR10'))
    assert cfg['Network']['T_max'] == 200 and cfg['ATTACK']['clamp'] is False


@pytest.mark.parametrize('name,model,golden', [
    ('MNIST', 'LIF', 'hosnn_kernel.pt'), ('MNIST', 'ALIF', 'hosnn_kernel.pt'),
    ('CIFAR10', 'LIF', 'hosnn_kernel.pt'), ('CIFAR10', 'ALIF', 'hosnn_kernel.pt'),
    ('CIFAR100', 'LIF', 'hosnn_softmax.pt'), ('CIFAR100', 'ALIF', 'hosnn_softmax.pt')])
def test_full_network_layouts(name, model, golden):
    cfg, _ = load_config(os.path.join(NETWORKS, f'{name}.yaml'),
                         [f'Network.model={model}', 'Network.ckpt_v=null'])
    with torch.device('meta'):  # the layout only: no 128 MB of CIFAR weights
        net = Network(cfg['Network'], cfg['Layers'], [1, 28, 28] if name == 'MNIST' else [3, 32, 32])
    layout = {'module.' + k: list(v.shape) for k, v in net.state_dict().items()}
    assert layout == load_golden(golden)['layouts'][f'{name}_{model}']


@pytest.mark.parametrize('text,value', [('8/255', 8 / 255), (' 1/10 ', 0.1), ('0.5', 0.5),
                                        ('.5/2', 0.25), (0.3, 0.3), (1, 1.0), ('16/255', 16 / 255),
                                        ('1e-3', 0.001), ('2.5E-2/2', 0.0125)])
def test_epsilon_parsing(text, value):
    assert parse_epsilon(text, 'ATTACK.strength[0]') == value


@pytest.mark.parametrize('text', ["__import__('os')", '8/0', '-1/255', '1e-3*2', 'eps', True, '8//255',
                                  float('nan'), float('inf'), '1e999', '2', '9' * 5000,
                                  '1/' + '9' * 5000, [0.1], None])
def test_epsilon_refused(text):
    with pytest.raises(ConfigError, match=r'ATTACK\.strength\[0\]'):
        parse_epsilon(text, 'ATTACK.strength[0]')


def test_non_numeric_epsilon_in_yaml(tmp_path):
    message = config_error(tmp_path, lambda c: c['ATTACK'].update(strength=['1/10', "__import__('os').system('true')"]))
    assert 'ATTACK.strength[1]' in message


def test_unknown_layer_type(tmp_path):
    message = config_error(tmp_path, lambda c: c['Layers']['conv_2'].update(type='convolution'))
    assert 'Layers.conv_2.type' in message and 'convolution' in message


def test_missing_required_key(tmp_path):
    message = config_error(tmp_path, lambda c: c['Layers']['FC_1'].pop('n_outputs'))
    assert 'Layers.FC_1.n_outputs is required' in message
    message = config_error(tmp_path, lambda c: c['Network'].pop('tau_m'))
    assert 'Network.tau_m is required' in message


@pytest.mark.parametrize('key,value', [('tau_m', 0), ('tau_s', -3), ('tau_v', 0)])
def test_non_positive_tau(tmp_path, key, value):
    message = config_error(tmp_path, lambda c: c['Network'].update({key: value}))
    assert f'Network.{key} must be positive' in message


@pytest.mark.parametrize('n_steps', [7, 15])
def test_n_steps_the_kernel_loss_cannot_tile(tmp_path, n_steps):
    message = config_error(tmp_path, lambda c: c['Network'].update(n_steps=n_steps, ckpt_v=None))
    assert f'Network.n_steps={n_steps}' in message


def test_n_steps_10_uses_the_other_pattern(tmp_path):
    cfg, _ = load_config(write_config(tmp_path, lambda c: c['Network'].update(n_steps=10, ckpt_v=None)))
    assert cfg['Network']['n_steps'] == 10


def test_layer_input_mismatch(tmp_path):
    message = config_error(tmp_path, lambda c: c['Layers']['conv_2'].update(in_channels=16))
    assert 'Layers.conv_2.in_channels is 16' in message and '15 channels' in message
    message = config_error(tmp_path, lambda c: c['Layers']['FC_1'].update(n_inputs=600))
    assert 'Layers.FC_1.n_inputs is 600' in message and '640' in message


def test_missing_nds_file(tmp_path):
    message = config_error(tmp_path, lambda c: c['Network'].update(ckpt_v=str(tmp_path / 'none.pt')))
    assert 'Network.ckpt_v' in message and 'none.pt' in message


def test_unreadable_nds_file(tmp_path):
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(b'not a torch file')
    message = config_error(tmp_path, lambda c: c['Network'].update(ckpt_v=str(junk)))
    assert 'Network.ckpt_v' in message and 'junk.pt' in message


def test_mismatched_nds_file(tmp_path):
    nds = torch.load(os.path.join(PROJECT_ROOT, 'spikedata', 'mnist', 'mnist.pt'),
                     map_location='cpu', weights_only=True)
    wrong_shape = dict(nds, conv_2=torch.zeros(40, 8, 8, 10))
    torch.save(wrong_shape, tmp_path / 'shape.pt')
    message = config_error(tmp_path, lambda c: c['Network'].update(ckpt_v=str(tmp_path / 'shape.pt')))
    assert "layer 'conv_2'" in message and '[40, 8, 8, 10]' in message
    missing_layer = {k: v for k, v in nds.items() if k != 'FC_1'}
    torch.save(missing_layer, tmp_path / 'missing.pt')
    message = config_error(tmp_path, lambda c: c['Network'].update(ckpt_v=str(tmp_path / 'missing.pt')))
    assert "no NDS for layer 'FC_1'" in message


def test_unknown_keys_are_warnings(tmp_path):
    def add(cfg):
        cfg['Network']['my_note'] = 'hello'
        cfg['Layers']['conv_1']['colour'] = 'red'
    cfg, warnings = load_config(write_config(tmp_path, add))
    assert any('Network.my_note' in w for w in warnings)
    assert any('Layers.conv_1.colour' in w for w in warnings)


def test_overrides(tmp_path):
    path = os.path.join(NETWORKS, 'MNIST.yaml')
    cfg, _ = load_config(path, ['Network.epochs=3', 'Layers.conv_1.threshold=0.5',
                                'ATTACK.strength=[8/255]', 'DEFAULT.ckpt=null'])
    assert cfg['Network']['epochs'] == 3 and cfg['Layers']['conv_1']['threshold'] == 0.5
    assert cfg['ATTACK']['strength'] == ['8/255']
    with pytest.raises(ConfigError, match='SECTION.KEY=VALUE'):
        parse_override('Network.epochs')
    with pytest.raises(ConfigError, match='unknown section'):
        parse_override('Netwrk.epochs=3')
    with pytest.raises(ConfigError, match=r'Network\.epochs must be a number'):
        load_config(path, ['Network.epochs=many'])


def test_unreadable_config(tmp_path):
    with pytest.raises(ConfigError, match='cannot read'):
        load_config(str(tmp_path / 'nothing.yaml'))
    broken = tmp_path / 'broken.yaml'
    broken.write_text('Network: [unclosed\n')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_config(str(broken))


@pytest.mark.parametrize('override,culprit', [
    # NaN, infinities and absurd sizes for integer keys
    ('DEFAULT.train_samples=.nan', 'DEFAULT.train_samples'), ('Network.epochs=.inf', 'Network.epochs'),
    ('Network.epochs=1e12', 'Network.epochs'), ('Network.n_steps=1000000', 'Network.n_steps'),
    ('DEFAULT.seed=18446744073709551616', 'DEFAULT.seed'), ('DEFAULT.seed=-1', 'DEFAULT.seed'),
    ('Layers.conv_1.in_channels=.nan', 'Layers.conv_1.in_channels'),
    ('ATTACK.strength=[.nan]', 'ATTACK.strength[0]'), ('ATTACK.train=[.inf]', 'ATTACK.train[0]'),
    ('ATTACK.strength=[8]', 'ATTACK.strength[0]'),
    ('Network.tau_s=1e-300', 'Network.tau_s'), ('Network.tau_m=0.5', 'Network.tau_m'),
    ('Network.tau_v=1e-300', 'Network.tau_v'),
    ('Network.ckpt_v=5', 'Network.ckpt_v'), ('Network.ckpt_v=false', 'Network.ckpt_v'),
    ('Network.ckpt_v=[a]', 'Network.ckpt_v'), ('Network.ckpt_v={a: 1}', 'Network.ckpt_v'),
    # accepted before without a word, and meaningless
    ('Layers.conv_1.threshold=0', 'Layers.conv_1.threshold'),
    ('Layers.FC_1.threshold=-1', 'Layers.FC_1.threshold'),
    ('Layers.output.threshold=.inf', 'Layers.output.threshold'),
    ('Layers.conv_2.weight_scale=0', 'Layers.conv_2.weight_scale'),
    ('Layers.FC_1.weight_scale=-2', 'Layers.FC_1.weight_scale'),
    ('Layers.conv_1.weight_scale=1e308', 'Layers.conv_1.weight_scale'),
    ('Layers.pooling_1.theta=.nan', 'Layers.pooling_1.theta'),
    ('Layers.pooling_1.theta=-1.1', 'Layers.pooling_1.theta'),
    ('Network.mean=.nan', 'Network.mean'), ('Network.std=.inf', 'Network.std'),
    ('Network.T_max=.nan', 'Network.T_max'), ('Network.lr=-.inf', 'Network.lr'),
    ('Network.lr=1e999', 'Network.lr'),
    # sizes that would allocate far more than any machine has
    ('Layers.conv_1.out_channels=1000000000', 'Layers.conv_1'),
    ('Network.batch_size=1000000000', 'Network.batch_size'),
    ('Layers.conv_1.kernel_size=[5, 1e9]', 'Layers.conv_1.kernel_size'),
])
def test_meaningless_values_are_one_line_errors(override, culprit):
    path = os.path.join(NETWORKS, 'MNIST.yaml')
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    message = str(info.value)
    assert message.startswith(f'{path}: {culprit}') and '\n' not in message and len(message) < 300


@pytest.mark.parametrize('section', ['null', '"text"', '[1, 2]'])
def test_set_into_a_section_that_is_not_a_mapping(tmp_path, section):
    path = tmp_path / 'odd.yaml'
    text = open(os.path.join(NETWORKS, 'MNIST.yaml')).read()
    path.write_text(text.replace('ATTACK:\n', f'ATTACK: {section}\nUNUSED:\n', 1))
    if section == 'null':  # an empty section: --set fills it
        cfg, _ = load_config(str(path), ['ATTACK.strength=[1e-2]'])
        assert cfg['ATTACK']['strength'] == [0.01]
    else:
        with pytest.raises(ConfigError, match=r"--set 'ATTACK.strength=\[1e-2\]': ATTACK is not a section"):
            load_config(str(path), ['ATTACK.strength=[1e-2]'])
        with pytest.raises(ConfigError, match='section ATTACK must be a mapping'):
            load_config(str(path))


def test_integral_floats_are_integers():
    """``1e1`` is a float in YAML; integer keys take it as the integer it is."""
    cfg, _ = load_config(os.path.join(NETWORKS, 'MNIST.yaml'),
                         ['Network.epochs=1e1', 'Layers.conv_1.kernel_size=5.0', 'Network.ckpt_v=null'])
    assert cfg['Network']['epochs'] == 10
    with torch.device('meta'):
        net = Network(cfg['Network'], cfg['Layers'], [1, 28, 28])
    assert tuple(net.layers[0].weight.shape) == (15, 1, 5, 5, 1)
