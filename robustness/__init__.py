"""robustness package. ``robustness.evaluate(model, images, labels, eps=8/255, suite='quick')``:
the adaptive evaluation of any network (robustness/api.py)."""

__all__ = ['evaluate']


def __getattr__(name):  # lazy: importing a submodule does not load the whole evaluation stack
    if name == 'evaluate':
        from robustness.api import evaluate
        return evaluate
    raise AttributeError(f"module 'robustness' has no attribute {name!r}")
