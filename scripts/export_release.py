"""Strip a run's checkpoint down to the released format: ``{'net': 'module.'-keyed state dict,
'epoch': int}`` (no optimiser, RNG, config or results; about 1 MB for the MNIST-size networks);
an ANN twin's keeps ``{'config': {'Network': {'model': 'ANN'}}}``, which its state dict cannot say.

    python scripts/export_release.py runs/fashionmnist/hosnn_clean/best.pth \\
        checkpoints/fashionmnist/hosnn_clean.pth

Prints the size and the sha256 of the written file (what a model card quotes). The file is read
weights-only and written atomically; NaN/Inf weights are refused by name.
"""
import argparse
import hashlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from runtime.checkpoint import CheckpointError, atomic_write, first_nonfinite, load_checkpoint  # noqa: E402
from errors import UserError  # noqa: E402
from layers.ann import ANN  # noqa: E402


def export(source, target):
    checkpoint = load_checkpoint(source)
    released = {'net': checkpoint['net'], 'epoch': int(checkpoint['epoch'])}
    model = (checkpoint.get('config') or {}).get('Network', {}).get('model')
    if model == ANN:
        # The one fact its state dict cannot say: the ANN twin's tensors have the names of its
        # LIF twin's (training.checkpoint_model reads the model from here).
        released['config'] = {'Network': {'model': ANN}}
    bad = first_nonfinite(released['net'])
    if bad is not None:
        raise CheckpointError(f"'{source}': tensor '{bad[0]}' holds {bad[1]} NaN/Inf values")
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    atomic_write(target, lambda f: torch.save(released, f))
    with open(target, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return os.path.getsize(target), digest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('source', help="a run's checkpoint (best.pth, last.pth, ...)")
    parser.add_argument('target', help='where to write the released-format file')
    args = parser.parse_args(argv)
    try:
        size, digest = export(args.source, args.target)
    except UserError as exc:  # an unusable source, an unwritable target
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    print(f"{args.target}: {size / 2**20:.2f} MiB, sha256 {digest}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
