"""Unpickling of data files that cannot run code.

A pickle is a program: its GLOBAL/REDUCE opcodes can import and call anything (os.system,
builtins.open, ...), so ``pickle.load`` on a file from a data folder runs whatever the file's
author wanted.  CIFAR's batch files are pickles holding only a dict of strings, lists of ints
and uint8 numpy arrays; ``load_data_pickle`` admits exactly the globals needed to rebuild those
(numpy's array reconstructors, ndarray, dtype, and plain-data builtins) and refuses every
other one, naming the file, before anything is called.
"""
import _codecs
import pickle

import numpy as np

from .errors import DataFileError

try:  # numpy >= 2 (the files it writes name numpy._core; older files name numpy.core)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


def _latin1_encode(text, encoding='latin1', errors='strict'):
    """_codecs.encode as protocol-2 pickles use it for bytes: text -> latin-1 bytes, nothing else."""
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1') or errors != 'strict':
        raise pickle.UnpicklingError('_codecs.encode is admitted only to turn text into latin-1 bytes')
    return _codecs.encode(text, encoding)


def _plain_bytes(*args):
    """bytes() / bytes(text, encoding) / bytes(bytes): never bytes(n), which allocates n bytes."""
    if args and isinstance(args[0], int):
        raise pickle.UnpicklingError('bytes(n) is not admitted')
    return bytes(*args)


def _admitted():
    """(module, name) -> object: every global a data pickle may name."""
    admitted = {('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype}
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        admitted[(module, '_reconstruct')] = _multiarray._reconstruct  # protocol <= 4 arrays
        admitted[(module, 'scalar')] = _multiarray.scalar  # numpy scalars (a number from bytes)
    for module in ('numpy.core.numeric', 'numpy._core.numeric'):
        admitted[(module, '_frombuffer')] = _numeric._frombuffer  # protocol 5 arrays
    for module in ('builtins', '__builtin__'):  # '__builtin__': Python 2 pickles
        admitted.update({(module, 'bytes'): _plain_bytes, (module, 'set'): set,
                         (module, 'frozenset'): frozenset, (module, 'complex'): complex})
    admitted[('_codecs', 'encode')] = _latin1_encode
    return admitted


class DataUnpickler(pickle.Unpickler):
    """An Unpickler whose find_class knows only the admitted plain-data globals."""

    def __init__(self, file, path, **kwargs):
        super().__init__(file, **kwargs)
        self.path = path
        self.admitted = _admitted()

    def find_class(self, module, name):
        try:
            return self.admitted[(module, name)]
        except KeyError:
            raise DataFileError(f"{self.path}: refusing to unpickle {module}.{name}: a data file holds "
                               "only arrays, lists, strings and numbers (crafted or corrupt file?)") from None

    def persistent_load(self, pid):
        raise DataFileError(f'{self.path}: refusing a pickle persistent id (not a plain data file)')


def load_data_pickle(path, encoding='latin1'):
    """Unpickle the data file `path` with DataUnpickler; every failure is a one-line DataFileError.

    encoding='latin1', as torchvision reads CIFAR: the Python 2 strings of the official files
    (including the array bytes) come back unchanged.
    """
    try:
        with open(path, 'rb') as f:
            return DataUnpickler(f, path, encoding=encoding).load()
    except DataFileError:
        raise
    except OSError as error:
        raise DataFileError(f'{path}: cannot be read ({error.strerror or error})') from None
    # A truncated or garbled pickle fails in many ways (EOFError, UnpicklingError, ValueError from
    # numpy's __setstate__, TypeError from a call with wrong arguments, ...): all mean "bad file".
    except Exception as error:  # noqa: BLE001
        detail = str(error).splitlines()[0] if str(error) else ''
        raise DataFileError(f'{path}: not a readable data pickle ({type(error).__name__}'
                           f'{": " + detail if detail else ""})') from None
