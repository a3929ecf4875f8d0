"""Multi-GPU (DDP) training of the KD trainers: teacher and projectors synchronised like nnU-Net's student.

nnU-Net (``nnUNetv2_train ... -num_gpus N``) spawns one process per GPU, gives each ``batch_size / N`` samples of
the plans' batch (``nnUNetTrainer._set_batch_size_and_oversample``), converts the student to ``SyncBatchNorm`` and
wraps it in ``DistributedDataParallel``, which averages its gradients over the ranks. The KD trainer adds to that:

* **Every KD module with trainable parameters gets its own DDP wrapper** (:func:`wrap_like_student`: SyncBatchNorm
  conversion, then ``DDP``, as nnU-Net does for the student): the teacher (after ``torch.compile`` when the student
  is compiled) and each projector. Why one wrapper per module rather than one DDP module holding them all:
  ``kd_modules`` keeps the plain modules, so checkpoint keys and the optimizer's parameter groups are the same on 1
  or N GPUs (a 4-GPU checkpoint resumes or validates on one); each module keeps running at its own hook
  (``teacher_forward``, ``distillation_terms``, which PixelKD and the frozen teacher override separately), whereas
  one DDP module must be called exactly once per step and would fuse those hooks into one forward; and a frozen
  teacher has nothing to synchronise (DDP refuses a module without trainable parameters): it is left unwrapped,
  identical on every rank because every rank loads it from the same checkpoint. DDP broadcasts rank 0's initial
  weights at wrapping, so randomly initialised teachers and projectors start equal on all ranks.
* **Barlow Twins is computed on the embeddings of the global batch** (:func:`gather_with_grad`, built on nnU-Net's
  own ``AllGatherGrad``, which its Dice loss uses for ``batch_dice``): every rank gathers both projected
  bottlenecks of all ranks, with gradients, and computes the same loss as one process on the whole batch (the
  feature standardisation and the cross-correlation need all samples: a per-rank loss is a different loss).
  Gradient scaling needs no correction: the gather's backward sums over ranks the gradient each rank computed for
  this rank's embeddings (all ranks compute the same loss, so that is N x dL/dz_rank), and DDP divides the
  parameter gradients by N, which leaves exactly the single-process gradient sum_rank dL/dz_rank dz_rank/dtheta.
  Per-rank batches of different sizes (a global batch not divisible by N) are padded for the gather and cut back.
* The per-epoch means of the extra loss terms and the teacher's pseudo-Dice counts are gathered from all ranks
  (:func:`mean_over_ranks`, :func:`sum_over_ranks`) as nnU-Net gathers its own ``train_losses`` and Dice counts.

The deep-supervision, pixel-KD and segmentation terms stay per rank and are averaged by DDP, exactly like nnU-Net's
own loss: equal to the global batch's loss when the ranks hold equal shares (nnU-Net's behaviour otherwise).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_kd.errors import ConfigurationError


def ddp_active() -> bool:
    """True inside a DDP process group (nnU-Net's ``is_ddp`` test)."""
    return dist.is_available() and dist.is_initialized()


def has_trainable_parameters(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def wrap_like_student(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` converted to SyncBatchNorm and wrapped in DDP as nnU-Net wraps the student.

    nnU-Net passes ``device_ids=[local_rank]`` (its DDP device is ``cuda:local_rank``); the same is taken from
    ``device`` here, and left out on a CPU device (gloo), where DDP refuses device ids.
    """
    module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    on_one_gpu = device.type == "cuda" and device.index is not None
    return DDP(module, device_ids=[device.index] if on_one_gpu else None)


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The tensors of all ranks concatenated along dim 0 in rank order, differentiable (see the module docstring).

    Uses nnU-Net's ``AllGatherGrad`` (forward all_gather, backward all_reduce(SUM) of the gradient, this rank's part).
    """
    from nnunetv2.utilities.ddp_allgather import AllGatherGrad

    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    largest = max(counts)
    padded = tensor.contiguous()
    if tensor.shape[0] < largest:
        padded = torch.cat([padded, padded.new_zeros((largest - tensor.shape[0], *tensor.shape[1:]))])
    stacked = AllGatherGrad.apply(padded)  # (world, largest, ...)
    return torch.cat([stacked[rank, :n] for rank, n in enumerate(counts)])


def mean_over_ranks(values) -> float:
    """Mean of every rank's ``values`` (per-step numbers of one epoch), as nnU-Net averages its ``train_losses``."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, np.asarray(values, dtype=np.float64).ravel())
    return float(np.concatenate(gathered).mean())


def sum_over_ranks(array: np.ndarray) -> np.ndarray:
    """Element-wise sum of every rank's ``array`` (Dice counts), as nnU-Net sums its tp/fp/fn."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, np.asarray(array))
    return np.sum(np.stack(gathered), axis=0)


def refuse_ddp(trainer_name: str, reason: str) -> None:
    """Raise a one-line :class:`ConfigurationError` when running under DDP; call it before nnU-Net writes anything."""
    if ddp_active():
        raise ConfigurationError(f"{trainer_name} does not support multi-GPU (DDP) training: {reason}; train it with "
                                 f"-num_gpus 1 (folds can run in parallel, one GPU each)")
