"""The YAML reader of config files and ``--set`` values (config.py): PyYAML's safe loader with
YAML 1.2 floats (``1e-3``), no dates, no aliases and bounded nesting. Any failure is a
ConfigError with a one-line message."""
import re

import yaml

from layers.config_keys import ConfigError, show

MAX_YAML_DEPTH = 32  # the schema nests 4 deep (section, layer, key, list)


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, for config files and ``--set`` values alike, with three changes.
    Numbers in scientific notation are floats as users write them: ``1e-3``, ``5E4`` (YAML 1.1,
    which PyYAML follows, wants ``1.0e-3`` and reads ``1e-3`` as a string). Dates stay strings (no
    key takes one). Aliases (``*name``) are refused and nesting is bounded, so that a small file
    can never expand into a huge value (the "billion laughs") or recurse without end."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != 'tag:yaml.org,2002:timestamp']
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not supported", mark)
        if self.depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


# After YAML 1.1's own float pattern (which needs a dot and a signed exponent): the rest of
# YAML 1.2's, i.e. an exponent after digits with or without a dot.
ConfigLoader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$'),
    list('-+.0123456789'))


def parse_yaml(source):
    """YAML text or bytes -> value, read by ConfigLoader. Any failure is a ConfigError whose
    message says what is wrong and where (the caller puts the file or flag in front)."""
    try:
        return yaml.load(source, Loader=ConfigLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ''
        raise ConfigError(f"not valid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.reader.ReaderError as exc:
        if exc.encoding:
            raise ConfigError(f"not {exc.encoding.upper()} text ({exc.reason} at byte "
                              f"{exc.position})") from None
        raise ConfigError(f"not valid YAML: character #x{exc.character:04x} at position "
                          f"{exc.position} is not allowed") from None
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
        # e.g. an integer of 5000 digits (beyond int()'s limit)
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"not valid YAML: {show(reason, 120)}") from None
