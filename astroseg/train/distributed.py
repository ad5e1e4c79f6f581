"""torchrun and DistributedDataParallel: joining the job, sharding batches, synced BatchNorm.

One process per GPU (or several on a CPU), started by `torchrun`, which sets RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous. Every rank draws the same global batch from the same generator
and takes its slice of it, so N ranks see exactly what one process sees with the whole batch.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from astroseg.device import resolve_device
from astroseg.errors import ParamsError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; the default is a job of one."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: Any = None     # a gloo group for small CPU-side agreements (stop, save)

    @property
    def main(self) -> bool:
        """Rank 0: the only one that prints and writes outputs."""
        return self.rank == 0


SINGLE = Dist()


def launched_by_torchrun() -> bool:
    """Whether this process is a rank of a torchrun (or torchrun-like) job."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def relaunch_under_torchrun(nproc: int, script: str) -> None:
    """Replace this process by `torchrun --nproc-per-node nproc script`; signals reach torchrun."""
    env = dict(os.environ)
    # torchrun would set 1 thread per rank and warn; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", script]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def init(device_name: str, key: str = "train.device") -> tuple[Dist, torch.device]:
    """Join the torchrun job if there is one (NCCL on CUDA, gloo on the CPU); pick the device."""
    device = resolve_device(device_name, key)
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return SINGLE, device
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ParamsError(f"local rank {local_rank} has no GPU: this node has "
                              f"{torch.cuda.device_count()}; start at most that many processes "
                              "per node (train.nproc or torchrun's --nproc-per-node)")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    # A dead peer breaks the connection at once; the timeout only bounds a silent hang.
    dist.init_process_group(backend, timeout=timedelta(minutes=10))
    control = dist.new_group(backend="gloo") if backend != "gloo" else None
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, control), device


def shutdown(d: Dist) -> None:
    """Leave the job (all ranks call it after the last collective)."""
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
    return batch if d.world == 1 else torch.tensor_split(batch, d.world)[d.rank]


def wrap(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """`model` as DDP with its BatchNorms computing global-batch statistics; as is for one rank."""
    if d.world == 1:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:
        model = _convert_batchnorm(model)
    # A weight with a size-1 axis (a conv on one input channel) gets a gradient whose stride on
    # that axis differs from DDP's bucket view; the layout is the same, the warning is noise.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def all_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """`t` summed over the ranks (in place)."""
    if d.world > 1:
        dist.all_reduce(t)
    return t


def any_rank(flags: list[bool], d: Dist) -> list[bool]:
    """Each flag OR-ed over the ranks, on the CPU: every rank takes the same branch after it."""
    if d.world == 1:
        return flags
    t = torch.tensor(flags, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.control)
    return [bool(v) for v in t.tolist()]


def gather_objects(obj: Any, d: Dist) -> list[Any]:
    """Every rank's `obj`, in rank order (small things: per-image scores, RNG states)."""
    if d.world == 1:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj, group=d.control)
    return out


def barrier(d: Dist) -> None:
    """Wait for every rank."""
    if d.world > 1:
        dist.barrier(group=d.control)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks whose gradient is the gradients' sum over the ranks."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are over all ranks' samples, on the CPU (gloo).

    nn.SyncBatchNorm does this on CUDA only. Mean and variance are two passes over the global
    batch, as one process computes them, so two ranks match one process to rounding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype)
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=m)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


def _convert_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for a GlobalBatchNorm2d holding the same parameters and buffers."""
    if type(module) is nn.BatchNorm2d:
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        new.load_state_dict(module.state_dict())
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        return new.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, _convert_batchnorm(child))
    return module
