"""The README's layout section names every module where it lives, so that a newcomer's map of the
project is the tree itself (the layout is checked against the files, not kept by hand)."""
import os
import re

from conftest import ROOT

PACKAGES = ('training', 'runtime', 'robustness', 'layers', 'datasets', 'scripts', 'examples')
MAX_ROOT_MODULES = 6  # the command lines, attack.py, config.py, errors.py
MAX_MODULE_LINES = 450


def layout_section():
    with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
        text = f.read()
    return text.split('\n## Layout\n', 1)[1].split('\n## ', 1)[0]


def package_row(section, package):
    """The table row of ``package/`` (its first cell names it)."""
    rows = [line for line in section.splitlines() if line.startswith(f'| `{package}/`')]
    assert len(rows) == 1, f"README layout: no single row for {package}/"
    return rows[0]


def modules(directory):
    return sorted(name for name in os.listdir(os.path.join(ROOT, directory))
                  if name.endswith(('.py', '.sh')) and name != '__init__.py')


def test_root_has_only_command_lines_and_a_few_shared_modules():
    root_modules = modules('.')
    assert len(root_modules) <= MAX_ROOT_MODULES, root_modules
    section = layout_section()
    for name in root_modules:
        assert f'`{name}`' in section, f"README layout does not name {name}"


def test_every_package_module_is_named_in_its_row():
    section = layout_section()
    for package in PACKAGES:
        if not os.path.isdir(os.path.join(ROOT, package)):
            continue
        row = package_row(section, package)
        named = set(re.findall(r'`([\w.]+\.(?:py|sh))', row))
        missing = [name for name in modules(package) if name not in named]
        assert not missing, f"README layout, row {package}/: {missing} not named"


def test_no_library_module_is_over_the_limit():
    too_long = {}
    for package in ('training', 'runtime', 'robustness', 'layers', 'datasets'):
        for name in modules(package):
            with open(os.path.join(ROOT, package, name), encoding='utf-8') as f:
                lines = sum(1 for _ in f)
            if lines > MAX_MODULE_LINES:
                too_long[f'{package}/{name}'] = lines
    assert not too_long
