"""The layering of the project, read from the source with ast (nothing is imported): no module
imports an entry point, there is no import cycle, and layers/ imports nothing of the project but
errors.py (which imports nothing)."""
import ast
import os

from conftest import ROOT

# scripts/ is not a package (its files are command lines), but what they import counts too.
PACKAGES = ('datasets', 'layers', 'robustness', 'runtime', 'scripts', 'training')
ENTRY_POINTS = ('main', 'protocol', 'evaluate')


def project_modules():
    """``{module name: file}`` of the project's modules: the root's, the packages' and the
    scripts' (tests aside)."""
    modules = {name[:-3]: os.path.join(ROOT, name) for name in sorted(os.listdir(ROOT))
               if name.endswith('.py')}
    for package in PACKAGES:
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if name.endswith('.py'):
                stem = name[:-3]
                modules[package if stem == '__init__' else f"{package}.{stem}"] = \
                    os.path.join(ROOT, package, name)
    return modules


def imports_of(module, path, modules):
    """The project modules ``module`` imports, at any depth of its code (a deferred import
    inside a function counts: it would still tie the two modules together)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(parts + ([node.module] if node.module else []))
            for alias in node.names:  # `from package import submodule` imports the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {name for name in found if name in modules and name != module}


def import_graph():
    modules = project_modules()
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state = {}  # module -> 'open' while on the current path, 'done' once fully explored

    def visit(module, path):
        state[module] = 'open'
        for target in sorted(graph[module]):
            if state.get(target) == 'open':
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target, path + [target])
                if cycle:
                    return cycle
        state[module] = 'done'
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            if cycle:
                return cycle
    return None


def test_the_graph_sees_the_imports():
    graph = import_graph()
    assert 'training.experiment' in graph['main'] and 'training.cli' in graph['main']
    assert 'layers.config_keys' in graph['layers']  # a relative import in a package's __init__
    assert 'layers.neuron' in graph['layers.bptt']  # `from . import neuron`
    assert 'training.protocol_table' in graph['scripts.protocol_report']


def test_no_module_imports_an_entry_point():
    graph = import_graph()
    offenders = {module: sorted(targets & set(ENTRY_POINTS)) for module, targets in graph.items()
                 if targets & set(ENTRY_POINTS)}
    assert not offenders


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, ' -> '.join(cycle)


def test_layers_import_nothing_of_the_project_but_errors():
    graph = import_graph()
    assert graph['errors'] == set()
    for module, targets in graph.items():
        if module == 'layers' or module.startswith('layers.'):
            outside = {t for t in targets if t != 'layers' and not t.startswith('layers.')}
            assert outside <= {'errors'}, (module, outside)
