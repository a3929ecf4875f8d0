"""Short training schedules for tests and the CPU demo.

:class:`SmokeSchedule` and :class:`DemoSchedule` are mixins: put one first in the bases of any trainer to get a
short run whose final validation predicts without test-time mirroring. ``nnUNetTrainer_smoke`` is stock nnU-Net
with the smoke schedule; it proves the ``nnUNet_extTrainer`` wiring and serves as a fast baseline.
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class SmokeSchedule:
    """2 epochs x 2 iterations, 1 validation iteration, a checkpoint every epoch, no mirroring at inference."""

    smoke_epochs = 2
    smoke_iterations = 2
    smoke_val_iterations = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)  # type: ignore[call-arg]
        self.num_epochs = self.smoke_epochs
        self.num_iterations_per_epoch = self.smoke_iterations
        self.num_val_iterations_per_epoch = self.smoke_val_iterations
        self.save_every = 1  # checkpoint_latest.pth after every epoch, so interrupted runs can resume (--c)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        result = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # type: ignore[misc]
        self.inference_allowed_mirroring_axes = None
        return result


class DemoSchedule(SmokeSchedule):
    """A few minutes on a CPU: 12 epochs x 10 iterations, 2 validation iterations (tiny-CPU demo, not a benchmark)."""

    smoke_epochs = 12
    smoke_iterations = 10
    smoke_val_iterations = 2


class nnUNetTrainer_smoke(SmokeSchedule, nnUNetTrainer):
    """Stock nnU-Net with the smoke schedule."""
