"""Console output says what its numbers are (issue 19 items 4 and 6b): every row of a published
attack says "published attack" (main.py's adversarial-test table and lines, protocol.py's table,
hence `make demo`'s), and progress bars and tables print eps as fractions (4/255, not 0.0157)."""
from fractions import Fraction

import main
import protocol
from attack import PUBLISHED_LABEL, attack_label, attacks_for
from runtime import outputs
from runtime.formatting import eps_text
from test_checkpoint_model import small

PUBLISHED = attacks_for('test')  # fgsm, rfgsm, pgd, bim


def test_eps_text_is_a_fraction():
    assert eps_text(4 / 255) == '4/255' and eps_text(8 / 255) == '8/255'
    assert eps_text(Fraction(8, 255)) == '8/255' and eps_text('2/255') == '2/255'
    assert eps_text(0.0) == '0' and eps_text(0.1) == '1/10' and eps_text(1) == '1'


def test_attack_label_names_the_published_attacks_only():
    assert set(PUBLISHED) == {'fgsm', 'rfgsm', 'pgd', 'bim'}
    for name in PUBLISHED:
        assert attack_label(name) == f"{name} ({PUBLISHED_LABEL})"
    assert attack_label('pgd-transfer') == 'pgd-transfer (published attack)'
    for name in ('clean', 'noise', 'gaussian', 'worst case (quick suite)', 'apgd-ce'):
        assert PUBLISHED_LABEL not in attack_label(name)


def _rows():
    return [{'attack': a, 'eps': e, 'accuracy': 0.5, 'n_samples': 9, 'output_rate': 0.1}
            for a, e in [('clean', 0.0)] + [(a, 4 / 255) for a in PUBLISHED]]


def test_main_robustness_table_labels_every_published_row():
    lines = outputs.format_robustness_table(_rows()).splitlines()
    assert PUBLISHED_LABEL not in lines[0] + lines[1]  # header, clean
    for line, name in zip(lines[2:], PUBLISHED):
        assert line.startswith(f"{name} (published attack)") and ' 4/255 ' in line, line
    assert len({line.index('4/255') for line in lines[2:]}) == 1  # still aligned


def test_protocol_table_labels_every_published_row():
    rows = []
    for attack in ('clean', 'fgsm', 'rfgsm', 'pgd', 'pgd-transfer', 'bim', 'noise',
                   'worst case (quick suite)'):
        rows.append({'attack': attack, 'eps': 0.0 if attack == 'clean' else 8 / 255,
                     'n_samples': 9, **{m: 0.5 for m in protocol.MODELS}})
    table = protocol.format_markdown_table(rows, 'FGSM').splitlines()
    by_attack = {line.split(' | ')[0][2:]: line for line in table[2:]}
    for name in (*PUBLISHED, 'pgd-transfer'):
        assert f"{name} (published attack)" in by_attack, table
        assert '| 8/255 |' in by_attack[f"{name} (published attack)"]
    for name in ('clean', 'noise', 'worst case (quick suite)'):
        assert name in by_attack


def test_main_console_labels_and_progress_bars_show_fractions(mnist_dir, tmp_path, capsys,
                                                               monkeypatch):
    """A real adversarial test: every console line of a published attack says so, and the
    progress bars name eps as a fraction."""
    descs = []
    real = outputs.RunOutputs.progress

    def spy(self, iterable, desc=None, **kwargs):
        descs.append(desc)
        return real(self, iterable, desc=desc, **kwargs)
    monkeypatch.setattr(outputs.RunOutputs, 'progress', spy)
    assert main.main(['-d', '0', '--out', str(tmp_path / 'run'), *small(
        mnist_dir, 'Network.model=LIF', 'DEFAULT.cleantrain=false', 'DEFAULT.test_samples=4',
        'ATTACK.strength=[4/255]')]) == 0
    stdout = capsys.readouterr().out.splitlines()
    attack_lines = [line for line in stdout if line.split(' ')[0] in PUBLISHED]
    assert len(attack_lines) == 2 * len(PUBLISHED)  # the per-attack lines and the table rows
    assert all('(published attack)' in line and '4/255' in line for line in attack_lines)
    assert {f"{name} eps=4/255" for name in PUBLISHED} <= set(descs)
    assert not [d for d in descs if d and '0.0157' in d]
