"""Spike diagnostics -- a network whose output layer never spikes scores chance everywhere and
must say so: spikes recovered exactly from the layer traces, per-layer firing rates in
results.json and TensorBoard, the output layer's rate in the robustness tables, and the warnings
for a silent output layer or constant predictions -- at training time, at evaluation time and in
protocol.py's table."""
import glob
import json
import os

import pytest
import torch

import main
import protocol
from config import load_config
from training.diagnostics import SpikeMonitor, diagnose, spikes_from_trace
from runtime.distributed import DistContext
from layers.dynamics import Lif
from layers.neuron import neuron_forward
from training.experiment import build_loaders, build_model
from conftest import N_TEST, settings

CTX = DistContext()
SILENT_OUTPUT = 'Layers.output.threshold=1000'  # no output neuron ever reaches it


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('tau_s', [2.0, 5.0])
def test_spikes_recovered_from_the_trace(dtype, tau_s):
    torch.manual_seed(0)
    current = torch.rand(8, 16, 10, dtype=dtype) * 2  # [T, B, N]
    threshold = 1.0
    trace, membrane, _, _ = neuron_forward(Lif, current, (), 5.0, tau_s, threshold, False,
                                           keep_membrane=True)
    spikes = (membrane > threshold).to(dtype)  # LIF: s_t = u_t > V, u_t the pre-reset membrane
    assert spikes.sum() > 0 and (1 - spikes).sum() > 0
    assert torch.equal(spikes_from_trace(trace, tau_s), spikes)


def small_cfg(mnist_dir, *extra, model='LIF', loss='kernel'):
    sets = settings(mnist_dir, *extra, model=model, loss=loss)
    cfg, _ = load_config('networks/MNIST.yaml', sets[1::2])
    return cfg


def monitored_pass(model, loader):
    with SpikeMonitor(model) as monitor:
        with torch.no_grad():
            for images, _ in loader:
                x = images.unsqueeze(-1).expand(*images.shape, model.settings.n_steps)
                model(x.contiguous(), False)
    return monitor.stats(CTX)


def test_monitor_rates_and_silent_output(mnist_dir):
    torch.manual_seed(0)
    cfg = small_cfg(mnist_dir)
    _, loader, _ = build_loaders(cfg, CTX, 0)
    model = build_model(cfg).eval()
    stats = monitored_pass(model, loader)
    assert set(stats['firing_rate']) == {'conv_1', 'conv_2', 'FC_1', 'output'}
    assert all(0 < rate < 1 for rate in stats['firing_rate'].values())
    assert stats['output_rate'] == stats['firing_rate']['output']
    assert stats['n_samples'] == N_TEST == sum(stats['predictions'])

    model.layers[-1].threshold = 1000.0  # the output layer can no longer fire
    dead = monitored_pass(model, loader)
    assert dead['output_rate'] == 0 and dead['firing_rate']['conv_1'] > 0
    assert dead['predictions'][0] == N_TEST  # argmax of an all-zero output: class 0
    (warning,) = diagnose(dead, 'clean test')
    assert 'output layer never spiked' in warning and 'chance' in warning
    assert diagnose(stats) == []


def test_attack_forwards_are_not_counted(mnist_dir):
    """Forwards with autograd on (an attack's input gradient) are not evaluated predictions."""
    cfg = small_cfg(mnist_dir)
    model = build_model(cfg).eval()
    x = torch.rand(4, 1, 28, 28, 5)
    with SpikeMonitor(model) as monitor:
        model(x, False)
    assert monitor.stats(CTX)['n_samples'] == 0
    with SpikeMonitor(model) as monitor, torch.no_grad():
        model(x, False)
    assert monitor.stats(CTX)['n_samples'] == 4
    model(x, False)  # hooks are gone after the monitor
    assert monitor.stats(CTX)['n_samples'] == 4


def test_softmax_readout_rate_is_not_applicable_and_constant_predictions_warned(mnist_dir):
    cfg = small_cfg(mnist_dir, loss='softmax')
    model = build_model(cfg).eval()
    stats = monitored_pass(model, build_loaders(cfg, CTX, 0)[1])
    assert stats['output_rate'] is None and stats['firing_rate']['output'] is None
    constant = dict(stats, predictions=[0] * 3 + [N_TEST] + [0] * 6)
    (warning,) = diagnose(constant, 'eval')
    assert 'every prediction is class 3' in warning


def test_training_run_logs_rates_and_warns_when_silent(mnist_dir, tmp_path, capsys):
    out = str(tmp_path / 'dead')
    assert main.main(['-d', '0', '--out', out, *settings(mnist_dir, SILENT_OUTPUT)]) == 0
    printed = capsys.readouterr().out
    assert 'epoch 0, clean test: the output layer never spiked' in printed
    assert 'adversarial test, clean: the output layer never spiked' in printed
    results = json.load(open(os.path.join(out, 'results.json')))
    epoch = results['epochs'][0]
    assert epoch['firing_rate']['output'] == 0 and epoch['firing_rate']['conv_1'] > 0
    assert all(row['output_rate'] == 0 for row in results['robustness'])
    assert results['robustness'][0]['firing_rate']['output'] == 0

    # TensorBoard: one folder per launch, with a firing-rate scalar per layer.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (launch,) = glob.glob(os.path.join(out, 'tb', '*'))
    events = EventAccumulator(launch)
    events.Reload()
    tags = set(events.Tags()['scalars'])
    assert {f'firing_rate/{n}' for n in ('conv_1', 'conv_2', 'FC_1', 'output')} <= tags
    assert events.Scalars('firing_rate/output')[0].value == 0


class _Outputs:
    def __init__(self):
        self.lines = []

    def log(self, message):
        self.lines.append(message)

    def progress(self, iterable, **kwargs):
        return iterable


def test_protocol_table_warns_about_a_dead_hosnn(mnist_dir, tmp_path):
    """The table of protocol.py: the output rate of every model on the clean row, and the
    silent-output warning for a HoSNN whose output layer never spikes."""
    base = small_cfg(mnist_dir)

    class Args:
        lif_epochs = hosnn_epochs = ft_epochs = 1
    _, stages = protocol.stage_configs(base, str(tmp_path), Args)
    models = {}
    for name, cfg in stages.items():
        torch.manual_seed(0)
        cfg = dict(cfg, Network=dict(cfg['Network'], ckpt_v=None), DEFAULT=dict(cfg['DEFAULT'], ckpt=None))
        models[name] = build_model(cfg).eval()
    models['hosnn_clean'].layers[-1].threshold = 1000.0
    outputs = _Outputs()
    rows, warnings = protocol.robustness_table(models, stages, build_loaders(base, CTX, 0)[1],
                                               [0.1], CTX, outputs, 'FGSM')
    assert len(warnings) == 1 and warnings[0].startswith('hosnn_clean (HoSNN clean-trained)')
    assert 'output layer never spiked' in warnings[0]
    clean = rows[0]
    assert clean['output_rate']['hosnn_clean'] == 0 and clean['output_rate']['lif_clean'] > 0
    table = protocol.format_markdown_table(rows, 'FGSM')
    assert '| output-layer firing rate (clean) | | ' in table and '| 0.0000 |' in table
    assert all(set(row['output_rate']) == set(protocol.MODELS) for row in rows)
