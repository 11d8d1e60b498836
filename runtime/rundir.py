"""The run directory (``--out``): created and checked before anything is computed, and locked so
that one directory holds one run.

Checks, in the order a user would want to hear about them: ``--out`` (or a parent) is not a file,
it can be created and written (not read-only, permitted), and it has room for about one more
checkpoint. The lock is ``<out>/.lock``: an ``flock`` held for the life of the run (the kernel
drops it when the process dies, however it dies) on a file naming the holder's pid and host. A
lock left by a dead process on this host is taken over; one held by a live process -- or by a
process on another host, which cannot be probed -- refuses the second run in one line. Every
failure is an OutputWriteError (checkpoint.py): one line naming the path, exit status 2.
"""
import errno
import fcntl
import os
import shutil
import socket

from runtime.checkpoint import OutputWriteError, output_error
from runtime.distributed import all_gather_object

LOCK_NAME = '.lock'
SPACE_MARGIN_BYTES = 16 * 2**20  # results.json, config.yaml, TensorBoard events, temporaries


def checkpoint_bytes(model, training=True):
    """About the size of one checkpoint of ``model``: its state dict, plus AdamW's two moment
    tensors per parameter when training (the optimiser state is saved for --resume)."""
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = sum(p.numel() * p.element_size() for p in model.parameters()) if training else 0
    return state + 2 * moments


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(path):
    """``(pid, host)`` written in a lock file, or ``(None, None)`` if unreadable/empty."""
    try:
        with open(path) as f:
            pid, host = f.read().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None, None


def _created_parents(directory):
    """The directories ``os.makedirs(directory)`` is about to create, outermost first."""
    missing = []
    path = os.path.abspath(directory)
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing[::-1]


class RunDirectory:
    """``with RunDirectory(out_dir, needed_bytes):`` -- create/check/lock ``out_dir``; on exit
    release the lock and, if the run failed before writing anything, remove the directories it
    created (no empty output folder is left behind)."""

    def __init__(self, out_dir, needed_bytes=0, active=True):
        self.out_dir = out_dir
        self.active = active  # False on ranks other than 0: rank 0 alone owns the directory
        self.needed_bytes = needed_bytes
        self.lock_path = os.path.join(out_dir, LOCK_NAME)
        self._fd = None
        self._created = []
        self.held = False

    def __enter__(self):
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc_info):
        self.release()
        return False

    def acquire(self):
        if not self.active:
            self.held = True
            return
        created = _created_parents(self.out_dir)
        try:
            os.makedirs(self.out_dir, exist_ok=True)
        except OSError as exc:
            raise OutputWriteError(f"--out {self.out_dir} cannot be created: "
                              f"{output_error(exc, self.out_dir)}") from None
        self._created = created
        try:
            self._lock()
            self._check_space()
        except BaseException:
            self.release()
            raise
        self.held = True

    def _lock(self):
        host, pid = socket.gethostname(), os.getpid()
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                raise output_error(exc, self.lock_path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder_pid, holder_host = _read_holder(self.lock_path)
                raise OutputWriteError(self._busy_message(holder_pid, holder_host)) from None
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise output_error(exc, self.lock_path) from None
                # No flock on this file system: fall back to the pid written in the file.
                holder_pid, holder_host = _read_holder(self.lock_path)
                if holder_pid is not None and holder_pid != pid and (
                        holder_host != host or _pid_alive(holder_pid)):
                    os.close(fd)
                    raise OutputWriteError(self._busy_message(holder_pid, holder_host)) from None
            # A run that was releasing unlinked the file after we opened it: lock the new one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        try:  # a stale lock (dead holder) is simply overwritten
            os.ftruncate(fd, 0)
            os.write(fd, f"{pid} {host}\n".encode())
            os.fsync(fd)
        except OSError as exc:
            raise output_error(exc, self.lock_path) from None

    def _busy_message(self, pid, host):
        who = f"pid {pid} on {host}" if pid is not None else "another process"
        return (f"--out {self.out_dir} is in use by another run ({who}; lock {self.lock_path}): "
                f"wait for it to finish or choose another --out")

    def _check_space(self):
        if not self.needed_bytes:
            return
        free = shutil.disk_usage(self.out_dir).free
        if free < self.needed_bytes + SPACE_MARGIN_BYTES:
            raise OutputWriteError(
                f"no space left on {os.path.abspath(self.out_dir)}: {free / 2**20:.1f} MiB free, "
                f"one checkpoint needs about {(self.needed_bytes + SPACE_MARGIN_BYTES) / 2**20:.1f} MiB")

    def release(self):
        self.held = False
        if self._fd is not None:
            try:
                os.unlink(self.lock_path)  # before unlocking: a waiter re-checks the inode
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
        for directory in reversed(self._created):  # innermost first; only if still empty
            try:
                os.rmdir(directory)
            except OSError:
                break
        self._created = []


def open_run_directory(out_dir, ctx, needed_bytes=0):
    """Rank 0 creates, checks and locks ``out_dir``; every rank learns the outcome, so a refused
    run ends on every rank with the same one line (no rank left waiting in a collective).
    Returns the RunDirectory; call ``release()`` (or use it as a context manager) at the end."""
    run_dir = RunDirectory(out_dir, needed_bytes, active=ctx.is_main)
    message = None
    try:
        run_dir.acquire()
    except OutputWriteError as exc:
        message = str(exc)
    message = all_gather_object(ctx, message)[0]
    if message is not None:
        run_dir.release()
        raise OutputWriteError(message)
    return run_dir
