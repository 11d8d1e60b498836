"""The BPTT backward's adjoint recursion (``layers/dynamics.py``: ``lif_adjoint``,
``ta_lif_adjoint``) as one compiled C loop for CPU tensors (``layers/bptt_cpu.c``).

Why: in PyTorch the recursion is a dozen element-wise kernels per time step, each a pass over
memory; an attack step through the exact gradient spent a fifth (LIF) to a third (TA-LIF) of its
time there on one CPU thread (Fashion-MNIST, batch 64). The C loop makes one pass, keeping each
neuron's running state in registers, and runs every surrogate of ``layers/surrogate.py``.

How: at first use the C file is compiled with the system's C compiler (``$CC``, else ``cc``) into
the user's cache directory (``$XDG_CACHE_HOME/hosnn`` or ``~/.cache/hosnn``; a temporary directory
if that is not writable), named by a hash of the source, the compiler flags and the CPU, and
loaded with ctypes. ctypes releases the GIL, so the elements are split between
``torch.get_num_threads()`` threads. The float32 and float64 CPU paths use it; without a compiler,
on other devices or dtypes, or with ``HOSNN_NO_CPU_KERNEL=1`` in the environment, the PyTorch
loop runs. The two agree to rounding (``tests/test_bptt.py``); the forward is never compiled (the
spikes are the model's own, bit for bit).
"""
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_suffix('.c')
# The order of the surrogates in the C dispatch (bptt_cpu.c, FOR_KINDS).
SURROGATE_KINDS = ('published', 'sigmoid', 'fast-sigmoid', 'arctan', 'triangle', 'rectangle')
FLAGS = ('-O3', '-march=native', '-fno-math-errno', '-shared', '-fPIC')
ENTRY_POINTS = {torch.float32: ('bptt_adjoint_f32', ctypes.c_float),
                torch.float64: ('bptt_adjoint_f64', ctypes.c_double)}
MIN_ELEMENTS_PER_THREAD = 32768  # below this a thread costs more than it saves


def _cpu_signature():
    try:
        with open('/proc/cpuinfo') as info:
            return next((line for line in info if line.startswith(('flags', 'Features'))), '')
    except OSError:
        return platform.processor()


def _cache_dir():
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    path = Path(base) / 'hosnn'
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix='hosnn-'))


def _compile(compiler):
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b'\0'.join([source, ' '.join(FLAGS).encode(), compiler.encode(),
                                     _cpu_signature().encode(), platform.machine().encode()]))
    directory = _cache_dir()
    library = directory / f"bptt_cpu-{key.hexdigest()[:16]}.so"
    if not library.exists():
        # Compile next to the target, then rename: a concurrent process (torchrun) never loads a
        # half-written file.
        partial = tempfile.NamedTemporaryFile(dir=directory, suffix='.so.partial', delete=False)
        partial.close()
        try:
            subprocess.run([compiler, *FLAGS, '-o', partial.name, str(SOURCE), '-lm'], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
            os.replace(partial.name, library)
        finally:
            if os.path.exists(partial.name):
                os.unlink(partial.name)
    return ctypes.CDLL(str(library))


@functools.lru_cache(maxsize=None)
def _library():
    """The loaded kernel library, or None where it cannot be built (no compiler, or it failed)."""
    compiler = os.environ.get('CC') or 'cc'
    if shutil.which(compiler) is None or not SOURCE.exists():
        return None
    try:
        library = _compile(compiler)
    except (OSError, subprocess.SubprocessError):
        return None
    for name, real in ENTRY_POINTS.values():
        function = getattr(library, name)
        pointer = ctypes.POINTER(real)
        function.argtypes = [pointer, pointer, pointer, ctypes.c_double, pointer, pointer,
                             ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                             ctypes.c_long, ctypes.c_double, ctypes.c_double, ctypes.c_int,
                             ctypes.c_double, pointer, pointer]
        function.restype = ctypes.c_int
    return library


def available(tensor):
    """Whether the compiled loop can run the backward of ``tensor`` (builds it at first call)."""
    return (tensor.device.type == 'cpu' and tensor.dtype in ENTRY_POINTS
            and os.environ.get('HOSNN_NO_CPU_KERNEL') != '1' and _library() is not None)


def _pointer(tensor, real):
    return None if tensor is None else ctypes.cast(tensor.data_ptr(), ctypes.POINTER(real))


def adjoint(grad_traces, membrane, surrogate, sharpness, leak, tau_s, threshold, out,
            thresholds=None, theta_v=None, nds=None):
    """``dL/dI`` into ``out`` (``[T, B, *shape]``; may be ``membrane``) and, for TA-LIF
    (``thresholds`` ``[T, B, *shape]``, ``theta_v`` ``[*shape]``, time-major ``nds``
    ``[T, *shape]`` given), ``dL/dtheta_v`` ``[*shape]`` (else None). Call only where
    :func:`available`."""
    name, real = ENTRY_POINTS[membrane.dtype]
    function = getattr(_library(), name)
    n_steps, numel = membrane.shape[0], membrane[0].numel()
    tensors = [t.contiguous() if t is not None else None
               for t in (grad_traces, membrane, thresholds, theta_v, nds)]
    grad_traces, membrane, thresholds, theta_v, nds = tensors
    assert out.is_contiguous()
    adaptive = thresholds is not None
    neurons = theta_v.numel() if adaptive else 1
    grad_theta_v = torch.empty_like(membrane[0]) if adaptive else None
    arguments = [_pointer(grad_traces, real), _pointer(membrane, real), _pointer(thresholds, real),
                 float(threshold), _pointer(theta_v, real), _pointer(nds, real), neurons, n_steps,
                 numel]
    tail = [float(leak), 1 / tau_s, SURROGATE_KINDS.index(surrogate), float(sharpness),
            _pointer(out, real), _pointer(grad_theta_v, real)]
    n_threads = max(1, min(torch.get_num_threads(), numel // MIN_ELEMENTS_PER_THREAD))
    bounds = [numel * i // n_threads for i in range(n_threads + 1)]
    results = [None] * n_threads

    def run(i):
        results[i] = function(*arguments, bounds[i], bounds[i + 1], *tail)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(1, n_threads)]
    for thread in threads:
        thread.start()
    run(0)
    for thread in threads:
        thread.join()
    if any(result != 0 for result in results):
        raise RuntimeError(f"bptt_cpu: the C loop refused its arguments (surrogate {surrogate!r})")
    return out, (grad_theta_v.sum(0) if adaptive else None)
