"""Process-group helpers: setup from torchrun's environment, autograd-aware collectives, synced BN.

The collectives here make a DDP step equal a one-process step on the same global batch: every
rank's loss is built from globally gathered quantities, the collectives' backward sums the cross-
rank gradients, and DDP's gradient average then yields the gradient of the global loss.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

Tensor = torch.Tensor


def setup(device: torch.device, timeout_minutes: float) -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU); (rank, world_size).

    Under torchrun the group is formed even for one process, so that one-process run takes the
    same DDP and collective path as a larger one; a plain ``python -m train`` forms none.

    A collective that waits longer than ``timeout_minutes`` (``run.ddp_timeout_minutes``: a frozen
    or dead rank) fails the run instead of stalling it.
    """
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    return dist.get_rank(), dist.get_world_size()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def initialized() -> bool:
    return dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rows = tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over ranks; backward sums the incoming gradients over ranks too."""
    return _AllReduceSum.apply(tensor) if world_size() > 1 else tensor


def all_gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate equal-sized ``tensor`` of every rank along dim 0 in rank order, with autograd."""
    return _AllGather.apply(tensor) if world_size() > 1 else tensor


def gather_objects(obj):
    """The list of ``obj`` from every rank, in rank order (a one-element list without DDP)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the batch of every rank (any device, any backend).

    Used in place of ``nn.SyncBatchNorm`` where that one refuses (CPU tensors). In eval mode, or
    without a process group, it is a plain BatchNorm.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"input: expected at least 2 dims (N, C, ...), got shape {tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        dims = [d for d in range(input.dim()) if d != 1]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        count = torch.tensor([float(x.numel() // x.shape[1])], device=x.device)
        sums = all_reduce_sum(torch.cat([x.sum(dims), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        centred = x - mean.view(shape)
        var = all_reduce_sum((centred * centred).sum(dims)) / total
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (total / (total - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)
        return y.to(input.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm of ``module`` by one with statistics synced over the ranks."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        synced = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        for p_old, p_new in zip(module.parameters(), synced.parameters(), strict=True):
            p_new.requires_grad_(p_old.requires_grad)
        return synced
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child, device))
    return module
