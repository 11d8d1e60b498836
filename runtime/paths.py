"""Where the repository is, and how file names in a config are found.

The published YAMLs name files relative to the repository root (``./spikedata/mnist/mnist.pt``);
the entry points may be started from anywhere. The layers package never resolves paths: it reads
the file names it is given, already resolved by the config loader (``config.resolve``).
"""
import os

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_input_path(path):
    """A file named in a config: relative to the current directory, else to the project root
    (the published YAMLs say ``./spikedata/...``, meant from the repository root)."""
    if path is None or os.path.isabs(path) or os.path.exists(path):
        return path
    candidate = os.path.join(PROJECT_ROOT, path)
    return candidate if os.path.exists(candidate) else path
