"""robust_accuracy.png drawn for reading (issue 19 item 3), from a ``robustness.json`` result.

- The 64/255 sanity run (rows and worst-case entries flagged ``sanity_eps``, or at ε = 64/255)
  checks for gradient masking; it is not a point of the robustness curve, and drawn on it it
  squeezes the ε that matter into the left tenth of the axis. It is left out and named in a note.
- One ε (after that): a horizontal bar chart of the attacks, sorted, the strongest (lowest
  accuracy) on top, under the worst case.
- Several ε: accuracy against ε, the legend grouped by attack family (published attacks, PGD,
  APGD, transfer, black box), one hue per family (published attacks dotted).
- The worst case (an image counts only if no attack fooled it) is thick black and labelled.
- One panel per (threat model, clamp) group.

:func:`plot_data` returns what is drawn (the tests read it, not the image); :func:`plot_png`
draws it. Only matplotlib is optional: without it ``plot_png`` returns None.
"""
import io
from fractions import Fraction


from robustness.checks import SANITY_EPS  # the masking check's ε: not a point of the curve
from robustness.plan import PUBLISHED_LABEL

FAMILIES = ('published attacks', 'PGD', 'APGD', 'transfer', 'black box', 'other')
# A sequential colour map per family: one hue per family, its members in shades of it.
FAMILY_COLOURS = {'published attacks': 'Greys', 'PGD': 'Blues', 'APGD': 'Greens',
                  'transfer': 'Oranges', 'black box': 'Purples', 'other': 'RdPu'}
MARKERS = ('o', 's', '^', 'v', 'D', 'P', 'X', '*')
SWEEP_MIN_PATHS = 4  # an attack run over more gradient paths than this is drawn as its strongest


def is_sanity(entry):
    """Whether a row or worst-case entry belongs to the sanity run (flagged, or at 64/255)."""
    return bool(entry.get('sanity_eps')) or Fraction(entry['eps']) == SANITY_EPS


def family(row):
    """The attack family of a row, for grouping and colour."""
    attack = row['attack']
    if attack.startswith('published-') or row.get('label') == PUBLISHED_LABEL:
        return 'published attacks'
    if attack.startswith('transfer') or row.get('gradient', '').startswith('partner:'):
        return 'transfer'
    if attack == 'square' or row.get('gradient') == 'none':
        return 'black box'
    if attack.startswith('apgd'):
        return 'APGD'
    if attack.startswith('pgd'):
        return 'PGD'
    return 'other'


def _series_label(row, gradient):
    if row['attack'].startswith('published-'):
        return f"{row['attack'][len('published-'):].upper()} ({PUBLISHED_LABEL})"
    label = f"{row['attack']} [{gradient}, {row['loss']}, {row['steps']}x{row['restarts']}]"
    # A survivors-only attack's row is the worst case after it, not its own accuracy: say so.
    return label + (' (on survivors)' if row.get('scope') == 'survivors' else '')


def _series(rows):
    """Rows -> ``{label: {'family', 'points': {eps: accuracy}}}``. An attack swept over many
    gradient paths becomes one series, its strongest path at each ε; a path chosen per ε
    ("strongest path #n so far") is one series across ε."""
    def key(row):
        return row['attack'], row['loss'], row['steps'], row['restarts']
    paths = {}
    for row in rows:
        if row.get('path_choice', 'fixed') == 'fixed':
            paths.setdefault(key(row), set()).add(row['gradient'])
    series = {}
    for row in rows:
        if row.get('path_choice', 'fixed') != 'fixed':
            gradient = row['path_choice'].replace('best:', 'strongest path #')
        elif len(paths.get(key(row), ())) >= SWEEP_MIN_PATHS:
            gradient = f"strongest of {len(paths[key(row)])} paths"
        else:
            gradient = row['gradient']
        entry = series.setdefault(_series_label(row, gradient),
                                  {'family': family(row), 'points': {}})
        eps = float(Fraction(row['eps']))
        entry['points'][eps] = min(entry['points'].get(eps, 2.0), row['accuracy'])
    return series


def plot_data(result):
    """What :func:`plot_png` draws, one dict per (threat, clamp) panel:

    ``threat``, ``clamp``; ``kind`` (``'bars'`` for one ε, ``'lines'`` for several, ``'empty'``);
    ``eps`` (the plotted ε, floats, ascending); ``series`` (lines: ``{label, family,
    published, eps, accuracy}`` in legend order, grouped by family); ``bars`` (bars: ``{label,
    family, published, accuracy}``, lowest accuracy first); ``worst`` (``{eps, accuracy}`` per
    plotted ε); ``sanity`` (the left-out sanity run: ``{eps, accuracy}`` of its worst case)."""
    rows = result.get('rows', [])
    groups = sorted({(r['threat'], r['clamp']) for r in rows})
    panels = []
    for threat, clamp in groups:
        group = [r for r in rows if (r['threat'], r['clamp']) == (threat, clamp)]
        worst_entries = [e for e in result.get('worst_case', [])
                         if (e['threat'], e['clamp']) == (threat, clamp)]
        kept = [r for r in group if not is_sanity(r)]
        series = _series(kept)
        eps = sorted({float(Fraction(r['eps'])) for r in kept})
        worst = sorted(({'eps': float(Fraction(e['eps'])), 'accuracy': e['accuracy']}
                        for e in worst_entries if not is_sanity(e)), key=lambda p: p['eps'])
        sanity = [{'eps': e['eps'], 'accuracy': e['accuracy']} for e in worst_entries if is_sanity(e)]
        order = sorted(series, key=lambda name: (FAMILIES.index(series[name]['family']),
                                                 min(series[name]['points'].values())))
        panel = {'threat': threat, 'clamp': clamp, 'eps': eps, 'worst': worst, 'sanity': sanity,
                 'series': [], 'bars': []}
        if not eps:
            panel['kind'] = 'empty'
        elif len(eps) == 1:
            panel['kind'] = 'bars'
            panel['bars'] = sorted(({'label': name, 'family': series[name]['family'],
                                     'published': series[name]['family'] == 'published attacks',
                                     'accuracy': series[name]['points'][eps[0]]}
                                    for name in series), key=lambda bar: bar['accuracy'])
        else:
            panel['kind'] = 'lines'
            for name in order:
                points = series[name]['points']
                xs = sorted(points)
                panel['series'].append({'label': name, 'family': series[name]['family'],
                                        'published': series[name]['family'] == 'published attacks',
                                        'eps': xs, 'accuracy': [points[e] for e in xs]})
        panels.append(panel)
    return panels


# --- drawing ------------------------------------------------------------------------------------

def _family_shades(plt, items):
    """A colour per item: its family's colour map, members spread over its darker half."""
    members = {}
    for item in items:
        members.setdefault(item['family'], []).append(item['label'])
    colours = {}
    for name, labels in members.items():
        cmap = plt.get_cmap(FAMILY_COLOURS[name])
        for i, label in enumerate(labels):
            colours[label] = cmap(0.9 - 0.45 * i / max(len(labels) - 1, 1))
    return colours


def _family_markers(items):
    """A marker per item, cycling within its family: shades of one hue alone are hard to tell
    apart when a family has many members."""
    seen = {}
    markers = {}
    for item in items:
        index = seen.get(item['family'], 0)
        seen[item['family']] = index + 1
        markers[item['label']] = MARKERS[index % len(MARKERS)]
    return markers


def _sanity_note(panel):
    if not panel['sanity']:
        return None
    return '; '.join(f"sanity run at ε={s['eps']} not drawn (worst case {100 * s['accuracy']:.2f}%)"
                     for s in panel['sanity'])


def _draw_lines(ax, panel, plt):
    from matplotlib.lines import Line2D
    colours = _family_shades(plt, panel['series'])
    markers = _family_markers(panel['series'])
    handles, labels, headers = [], [], set()
    current = None
    for item in panel['series']:
        if item['family'] != current:  # a legend header per family
            current = item['family']
            handles.append(Line2D([], [], linestyle='none'))
            labels.append(current)
            headers.add(len(labels) - 1)
        (line,) = ax.plot([e * 255 for e in item['eps']], [100 * a for a in item['accuracy']],
                          ':' if item['published'] else '-', marker=markers[item['label']],
                          markersize=4, linewidth=1.2, color=colours[item['label']])
        handles.append(line)
        labels.append(item['label'])
    worst = panel['worst']
    if worst:
        xs = [p['eps'] * 255 for p in worst]
        ys = [100 * p['accuracy'] for p in worst]
        (line,) = ax.plot(xs, ys, 'k-', marker='o', linewidth=3, zorder=5)
        # Values below the points: the worst case is the lowest curve, so nothing is there.
        for i, (x, y) in enumerate(zip(xs, ys)):
            last = i == len(xs) - 1
            ax.annotate(f"worst case {y:.1f}%" if last else f"{y:.1f}%", (x, y),
                        textcoords='offset points', xytext=(0, -15), fontsize=8,
                        fontweight='bold', ha='right' if last and len(xs) > 1 else 'center')
        handles.append(line)
        labels.append('worst case (all attacks)')
    ax.set_xticks([e * 255 for e in panel['eps']])
    ax.set_xticklabels([f"{e * 255:.3g}" for e in panel['eps']])
    ax.set_xlabel('ε × 255 (pixels)')
    ax.set_ylabel('accuracy (%)')
    ax.set_ylim(-2, 102)
    ax.margins(x=0.05)
    ax.grid(alpha=0.3)
    legend = ax.legend(handles, labels, fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0),
                       borderaxespad=0)
    for i, text in enumerate(legend.get_texts()):
        if i in headers:
            text.set_fontweight('bold')


def _draw_bars(ax, panel, plt):
    from matplotlib.patches import Patch
    colours = _family_shades(plt, panel['bars'])
    worst = panel['worst'][0]['accuracy'] if panel['worst'] else None
    names = (['worst case (all attacks)'] if worst is not None else []) + \
        [bar['label'] for bar in panel['bars']]
    values = ([worst] if worst is not None else []) + [bar['accuracy'] for bar in panel['bars']]
    colour = (['black'] if worst is not None else []) + [colours[b['label']] for b in panel['bars']]
    hatch = ([None] if worst is not None else []) + ['..' if b['published'] else None
                                                     for b in panel['bars']]
    positions = range(len(names))
    bars = ax.barh(positions, [100 * v for v in values], color=colour, edgecolor='white',
                   linewidth=0.5)
    for bar, pattern in zip(bars, hatch):
        if pattern:
            bar.set_hatch(pattern)
            bar.set_edgecolor('white')  # the hatch takes the edge colour: visible on any grey
    for y, value in zip(positions, values):
        ax.text(100 * value + 0.8, y, f"{100 * value:.1f}", va='center', fontsize=7)
    ax.set_yticks(list(positions))
    ax.set_yticklabels(names, fontsize=7)
    if worst is not None:
        ax.get_yticklabels()[0].set_fontweight('bold')
    ax.invert_yaxis()  # the worst case, then the strongest attack, on top
    ax.set_xlim(0, 105)
    ax.set_xlabel(f"accuracy (%) at ε = {panel['eps'][0] * 255:.3g}/255")
    ax.grid(axis='x', alpha=0.3)
    present = [f for f in FAMILIES if any(b['family'] == f for b in panel['bars'])]
    legend = [Patch(facecolor=plt.get_cmap(FAMILY_COLOURS[f])(0.75), edgecolor='white', label=f,
                    hatch='..' if f == 'published attacks' else None) for f in present]
    ax.legend(handles=legend, fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0, title='family', title_fontsize=7)


def plot_png(result):
    """robust_accuracy.png as bytes, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = plot_data(result)
    n = max(len(panels), 1)
    heights = [0.22 * (len(p['bars']) + 1) + 1.2 if p['kind'] == 'bars' else 5 for p in panels]
    # constrained layout makes room for each panel's outside legend (else it covers the next panel)
    fig, axes = plt.subplots(1, n, figsize=(11 * n, max(heights + [3])), squeeze=False,
                             layout='constrained')
    for ax, panel in zip(axes[0], panels):
        if panel['kind'] == 'lines':
            _draw_lines(ax, panel, plt)
        elif panel['kind'] == 'bars':
            _draw_bars(ax, panel, plt)
        else:
            ax.text(0.5, 0.5, 'no ε besides the sanity run', ha='center', va='center',
                    transform=ax.transAxes)
            ax.set_axis_off()
        ax.set_title(f"{panel['threat']}, clamp={str(panel['clamp']).lower()}")
        note = _sanity_note(panel)
        if note:
            ax.annotate(note, (0, -0.1 if panel['kind'] == 'lines' else -0.08),
                        xycoords='axes fraction', va='top', fontsize=7, color='0.35',
                        xytext=(0, -14), textcoords='offset points')
    if not panels:
        axes[0][0].text(0.5, 0.5, 'no rows', ha='center', va='center')
        axes[0][0].set_axis_off()
    return figure_png(fig)


# --- shared with scripts/robustness_table.py ----------------------------------------------------

def finish_accuracy_axes(ax, legend_fontsize):
    """Axis labels, range, grid and an outside legend of an accuracy-against-ε panel."""
    ax.set_xlabel('ε × 255 (pixels)')
    ax.set_ylabel('accuracy (%)')
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_fontsize, loc='upper left', bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0)


def figure_png(fig):
    """The figure as PNG bytes (the caller writes them atomically); the figure is closed."""
    import matplotlib.pyplot as plt
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=110, bbox_inches='tight')
    plt.close(fig)
    return buffer.getvalue()
