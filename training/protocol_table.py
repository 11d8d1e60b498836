"""The four models of protocol.py (their stage names, partners and titles) and its LIF vs HoSNN
table, shared with the report scripts (scripts/protocol_report.py, scripts/attack_sanity.py) so
that no module imports the protocol.py command line."""
from types import MappingProxyType

from attack import attack_label
from runtime.formatting import eps_text
from training.diagnostics import format_rate

MODELS = ('lif_clean', 'hosnn_clean', 'lif_ft', 'hosnn_ft')
# The partner of each model: the other neuron with the same training (the transfer row).
PARTNER = MappingProxyType({'lif_clean': 'hosnn_clean', 'hosnn_clean': 'lif_clean',
                           'lif_ft': 'hosnn_ft', 'hosnn_ft': 'lif_ft'})
# Titles in tables and plots; {ft} is the fine-tuning attack's title (e.g. FGSM).
TITLES = MappingProxyType({'lif_clean': 'LIF clean-trained', 'hosnn_clean': 'HoSNN clean-trained',
                          'lif_ft': 'LIF {ft}-trained', 'hosnn_ft': 'HoSNN {ft}-trained'})


def format_markdown_table(rows, ft):
    titles = [TITLES[name].format(ft=ft) for name in MODELS]
    lines = ['| attack | eps | ' + ' | '.join(titles) + ' | samples |',
             '|---|---|' + '---:|' * len(MODELS) + '---:|']
    for row in rows:
        cells = [f"{100 * row[name]:.2f}" if name in row else '' for name in MODELS]
        lines.append(f"| {attack_label(row['attack'])} | {eps_text(row['eps'])} | " + ' | '.join(cells)
                     + f" | {row['n_samples']} |")
    clean = next((row for row in rows if row['attack'] == 'clean' and 'output_rate' in row), None)
    if clean is not None:  # mean spikes per output neuron per step; n/a: a softmax read-out
        lines.append('| output-layer firing rate (clean) | | ' + ' | '.join(
            format_rate(clean['output_rate'].get(name)) for name in MODELS) + ' | |')
    return '\n'.join(lines)
