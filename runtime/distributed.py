"""Process-group setup for ``torchrun`` / SLURM / a plain single process, and the few collectives
the training code needs. NCCL with CUDA, gloo without."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from errors import UserError
from runtime.allocator import keep_freed_memory


class LaunchError(UserError):
    """A launch that cannot work (no CUDA for --device cuda, SLURM without MASTER_ADDR)."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def distributed(self):
        """True under torchrun/SLURM (even with one process: the same code path, DDP included)."""
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self):
        return self.rank == 0


def _launcher_env():
    """(rank, world_size, local_rank) from torchrun or SLURM, or None for a plain process."""
    env = os.environ
    if 'RANK' in env and 'WORLD_SIZE' in env:
        return int(env['RANK']), int(env['WORLD_SIZE']), int(env.get('LOCAL_RANK', 0))
    if 'SLURM_PROCID' in env and int(env.get('SLURM_NTASKS', 1)) > 1:
        if 'MASTER_ADDR' not in env:
            raise LaunchError("SLURM launch with SLURM_NTASKS > 1 but MASTER_ADDR is not set: "
                              "export MASTER_ADDR (and MASTER_PORT) as the first node's address")
        env.setdefault('MASTER_PORT', '29500')
        return int(env['SLURM_PROCID']), int(env['SLURM_NTASKS']), int(env.get('SLURM_LOCALID', 0))
    return None


def init_distributed(device_name=None):
    """Start the process group if launched by torchrun/SLURM; pick this process's device.

    ``device_name``: 'cpu', 'cuda' or None (CUDA when available)."""
    use_cuda = torch.cuda.is_available() if device_name is None else device_name == 'cuda'
    if use_cuda and not torch.cuda.is_available():
        raise LaunchError("--device cuda: CUDA is not available on this machine (torch "
                          f"{torch.__version__}); use --device cpu")
    keep_freed_memory()  # every step's [T, B, ...] tensors would be page-faulted in afresh
    launch = _launcher_env()
    if launch is None:
        return DistContext(device=torch.device('cuda' if use_cuda else 'cpu'))
    rank, world_size, local_rank = launch
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device('cuda', local_rank)
    else:
        device = torch.device('cpu')
        # Several CPU processes on one machine: share the cores instead of oversubscribing them.
        local_world = int(os.environ.get('LOCAL_WORLD_SIZE', world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    dist.init_process_group(backend='nccl' if use_cuda else 'gloo', rank=rank,
                            world_size=world_size, device_id=device if use_cuda else None)
    return DistContext(rank, world_size, local_rank, device)


def wait_for_all_ranks(ctx):
    """A barrier (no-op for one process). Before tearing the process group down: a rank that
    destroys it while another still works (rank 0 writes the outputs last) can abort in gloo's
    teardown ("terminate called without an active exception", seen once under load)."""
    if ctx.distributed:
        dist.barrier()


def cleanup_distributed():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx, values):
    """Sum a list of numbers (or one tensor) over all processes; returns float64 on the CPU."""
    tensor = torch.as_tensor(values, dtype=torch.float64)
    if ctx.distributed:
        # NCCL reduces device tensors only; gloo takes CPU tensors.
        reduced = tensor.to(ctx.device)
        dist.all_reduce(reduced)
        tensor = reduced.cpu()
    return tensor


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation sampler: rank r takes samples r, r + world, r + 2*world, ... in order. Unlike
    DistributedSampler it never pads, so every sample is counted exactly once (SPEC §7 fix)."""

    def __init__(self, dataset_size, ctx):
        self.indices = range(ctx.rank, dataset_size, ctx.world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def all_gather_object(ctx, obj):
    """``[obj of rank 0, obj of rank 1, ...]``."""
    if not ctx.distributed:
        return [obj]
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_buffers(ctx, module):
    """Give every rank rank 0's buffers (BatchNorm running statistics) before an evaluation or a
    save. Training runs DDP with broadcast_buffers=False: the NDS buffers never change, so
    re-sending them every step would only cost bandwidth."""
    if ctx.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)
