"""How numbers are shown to people (console lines, progress bars, tables): one formatter each, so
every entry point says them the same way."""
from fractions import Fraction

# Floats are read back to their nearest fraction with a denominator at most this: 8/255 computed
# in floating point prints as 8/255 (as robustness.threats.parse_eps reads it).
EPS_DENOMINATOR = 100000


def eps_text(eps):
    """An attack strength in pixel units as the fraction users write: ``4/255`` (not 0.0157),
    ``1/10``, ``0``. Exact for a Fraction or an int; a float shows its nearest short fraction."""
    if isinstance(eps, float):
        return str(Fraction(eps).limit_denominator(EPS_DENOMINATOR))
    return str(Fraction(eps))
