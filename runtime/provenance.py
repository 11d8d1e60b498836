"""Where a result came from: the code's git commit, the library versions, a file's sha256.
Recorded in every results.json (per launch) and robustness.json."""
import hashlib
import platform
import subprocess
from importlib import metadata

import numpy as np
import torch

from runtime.paths import PROJECT_ROOT as ROOT


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def git_commit():
    """HEAD of the repository (``+dirty`` with uncommitted changes to tracked files), or None
    (not a git checkout, or git missing)."""
    try:
        head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ('+dirty' if dirty else '')
    except (OSError, subprocess.SubprocessError):
        return None


def versions():
    # str(): torch.__version__ is a TorchVersion, which a weights-only checkpoint load refuses
    found = {'python': platform.python_version(), 'torch': str(torch.__version__),
             'numpy': np.__version__}
    try:  # metadata, not an import: torchattacks is only needed by the adaptive attacks
        found['torchattacks'] = metadata.version('torchattacks')
    except metadata.PackageNotFoundError:
        found['torchattacks'] = None
    return found
