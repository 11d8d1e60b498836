"""Reading keys out of the YAML sections, with errors that name the culprit."""
import numbers

_MISSING = object()


class ConfigError(ValueError):
    """A configuration mistake. The message names the key (``Section.key``) and, where known,
    the file."""


def get_number(cfg, key, where, default=_MISSING, positive=False, integer=False, minimum=None):
    """``cfg[key]`` as a number (``where`` names the section, e.g. ``Layers.conv_1``)."""
    if key not in cfg or cfg[key] is None:
        if default is _MISSING:
            raise ConfigError(f"{where}.{key} is required")
        return default
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{where}.{key} must be a number, got {value!r}")
    if integer and int(value) != value:
        raise ConfigError(f"{where}.{key} must be a whole number, got {value!r}")
    if positive and not value > 0:
        raise ConfigError(f"{where}.{key} must be positive, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}.{key} must be >= {minimum}, got {value!r}")
    return int(value) if integer else value


def get_pair(cfg, key, where, default=_MISSING, minimum=0):
    """An int or a two-element list of ints (kernel size, padding, stride, dilation)."""
    if key not in cfg or cfg[key] is None:
        if default is _MISSING:
            raise ConfigError(f"{where}.{key} is required")
        value = default
    else:
        value = cfg[key]
    values = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum
                                for v in values):
        raise ConfigError(f"{where}.{key} must be an integer >= {minimum} or a list of two, "
                          f"got {value!r}")
    return tuple(values)


def get_choice(cfg, key, where, choices, default=_MISSING):
    if key not in cfg or cfg[key] is None:
        if default is _MISSING:
            raise ConfigError(f"{where}.{key} is required (one of {', '.join(choices)})")
        return default
    value = cfg[key]
    if value not in choices:
        raise ConfigError(f"{where}.{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def get_bool(cfg, key, where, default=False):
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
    return value
