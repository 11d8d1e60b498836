"""Reading keys out of the YAML sections, with errors that name the culprit.

Every number read here is finite and bounded: a NaN, an infinity or a value far outside any sane
range is a one-line ConfigError, never a traceback, a hang or a huge allocation later on."""
import math
import re
from fractions import Fraction
import numbers

from errors import UserError

_MISSING = object()

# Real-valued keys stay well inside float32's range (3.4e38), so no value turns into inf (or its
# reciprocal into 0) when it meets a float32 tensor.
MAX_REAL = 1e30
# Integer keys without a bound of their own: far below int64 overflow in torch.
MAX_INTEGER = 2**62
# Kernel sizes, paddings, strides and dilations.
MAX_PAIR = 2**16
# weight_scale and the pooling theta: the published values are 1 to 5, and weights are clipped to
# [-4, 4] after every optimiser step anyway.
MAX_SCALE = 1000
# The most elements one tensor built from the config (a layer's weight, its output per sample and
# time step, its NDS) may have: 2**30 float32 values are 4 GiB.
MAX_ELEMENTS = 2**30


class ConfigError(UserError, ValueError):
    """A configuration mistake. The message names the key (``Section.key``) and, where known,
    the file."""


def show(value, limit=60):
    """``repr(value)``, cut short: an error message stays one readable line whatever the value."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _num(x):
    """A bound as users write it: ``1000``, ``1e+30``."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _as_number(value, name):
    """``value`` if it is a finite real number (bool is not), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {show(value)}")
    if isinstance(value, numbers.Integral):
        return value  # ints are finite at any size; the bounds below catch the huge ones
    try:
        finite = math.isfinite(value)
    except (OverflowError, ValueError):  # e.g. a Fraction too large for a float
        finite = False
    if not finite:
        raise ConfigError(f"{name} must be a finite number, got {show(value)}")
    return value


def get_number(cfg, key, where, default=_MISSING, positive=False, integer=False, minimum=None,
               maximum=None):
    """``cfg[key]`` as a finite number (``where`` names the section, e.g. ``Layers.conv_1``).
    ``integer``: a whole number (``5`` or ``5.0``, returned as int). ``maximum`` defaults to
    ``MAX_INTEGER`` for integers and ``MAX_REAL`` (in magnitude) for reals."""
    if key not in cfg or cfg[key] is None:
        if default is _MISSING:
            raise ConfigError(f"{where}.{key} is required")
        return default
    name = f"{where}.{key}"
    value = _as_number(cfg[key], name)
    if integer and int(value) != value:
        raise ConfigError(f"{name} must be a whole number, got {show(value)}")
    if positive and not value > 0:
        raise ConfigError(f"{name} must be positive, got {show(value)}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {_num(minimum)}, got {show(value)}")
    if maximum is None:
        maximum = MAX_INTEGER if integer else MAX_REAL
        if not integer and value < -MAX_REAL:
            raise ConfigError(f"{name} must be >= {_num(-MAX_REAL)}, got {show(value)}")
    if value > maximum:
        raise ConfigError(f"{name} must be at most {_num(maximum)}, got {show(value)}")
    return int(value) if integer else value


def get_pair(cfg, key, where, default=_MISSING, minimum=0, maximum=MAX_PAIR):
    """An int or a two-element list of ints (kernel size, padding, stride, dilation)."""
    if key not in cfg or cfg[key] is None:
        if default is _MISSING:
            raise ConfigError(f"{where}.{key} is required")
        value = default
    else:
        value = cfg[key]
    values = list(value) if isinstance(value, (list, tuple)) else [value, value]

    def whole(v):
        return (not isinstance(v, bool) and isinstance(v, numbers.Real) and
                (isinstance(v, numbers.Integral) or (math.isfinite(v) and v == int(v))) and
                minimum <= v <= maximum)

    if len(values) != 2 or not all(whole(v) for v in values):
        raise ConfigError(f"{where}.{key} must be an integer from {minimum} to {maximum} or a "
                          f"list of two, got {show(value)}")
    return tuple(int(v) for v in values)


def get_choice(cfg, key, where, choices, default=_MISSING):
    if key not in cfg or cfg[key] is None:
        if default is _MISSING:
            raise ConfigError(f"{where}.{key} is required (one of {', '.join(choices)})")
        return default
    value = cfg[key]
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{where}.{key} must be one of {', '.join(choices)}, got {show(value)}")
    return value


def get_bool(cfg, key, where, default=False):
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false, got {show(value)}")
    return value


def check_elements(where, what, count, limit=MAX_ELEMENTS):
    """Refuse, before anything is allocated, a tensor of ``count`` elements above ``limit``."""
    if count > limit:
        raise ConfigError(f"{where}: {what} would have {count:,} elements (at most {limit:,}); "
                          f"the sizes are far beyond anything this network can train")


_NUMBER = r'(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,3})?'
_FRACTION = re.compile(rf'^\s*({_NUMBER})\s*(?:/\s*({_NUMBER})\s*)?$')


def read_fraction(value, where):
    """A non-negative number, or a string such as ``8/255`` or ``1e-3``, as an exact ``Fraction``
    (parsed with ``fractions``, never ``eval``): the one parser of attack strengths (ε), for the
    YAML and for command lines. Raises ConfigError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: {show(value)} is not a number or a fraction such as 8/255")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    if isinstance(value, (int, float)):
        number = Fraction(value)
    else:
        match = _FRACTION.match(value) if len(value) <= 64 else None  # (no 5000-digit numbers)
        if not match:
            raise ConfigError(f"{where}: {show(value)} is not a number or a fraction such as 8/255")
        number = Fraction(match.group(1))
        if match.group(2) is not None:
            if Fraction(match.group(2)) == 0:
                raise ConfigError(f"{where}: {value!r} divides by zero")
            number /= Fraction(match.group(2))
    if number < 0:
        raise ConfigError(f"{where}: {show(value)} must not be negative")
    return number
