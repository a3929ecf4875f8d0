"""Short training schedules for tests and the CPU demo.

:class:`SmokeSchedule`, :class:`TinySmokeSchedule` and :class:`DemoSchedule` are mixins: put one first in the bases of
any trainer to get a short run whose final validation (if any) predicts without test-time mirroring. ``nnUNetTrainer_smoke`` is stock nnU-Net
with the smoke schedule; it proves the ``nnUNet_extTrainer`` wiring and serves as a fast baseline.
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class SmokeSchedule:
    """2 epochs x 1 iteration, 1 validation iteration, a checkpoint every epoch, no mirroring at inference.

    One training step per epoch because the test suite trains about 20 ``_smoke`` models and a step costs seconds
    on a CPU; two epochs stay, so that per-epoch logs, checkpoints and resuming (``--c``) are exercised. The
    per-epoch means over several steps are tested in-process (tests/test_kd_train_step.py).
    """

    smoke_epochs = 2
    smoke_iterations = 1
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


class TinySmokeSchedule(SmokeSchedule):
    """1 epoch x 1 iteration, 1 validation iteration, and no final validation.

    For end-to-end tests that run one tiny training per dataset and then predict with ``nnUNetv2_predict``
    themselves (tests/test_brats_kinds.py): the final validation would predict the same cases again through
    the same predictor, and each prediction run costs seconds of process start-up (spawned workers that import
    torch and nnU-Net). Checkpoints, plans and dataset.json are written as in any run.
    """

    smoke_epochs = 1
    smoke_iterations = 1

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped (TinySmokeSchedule: predict with nnUNetv2_predict)")


#: The sized epoch count of a demo run, in its fold folder, so that ``--c`` resumes the same schedule.
DEMO_SCHEDULE_FILE = "demo_schedule.json"


class DemoSchedule(SmokeSchedule):
    """The CPU demo's schedule: as many 10-iteration epochs as fit a training-time budget on *this* machine.

    Machines of this kind differ up to 3x in speed, so a fixed epoch count is either too long on a slow one or
    wasted on a fast one. Before the first epoch three real training steps run (they also train); the faster of
    the second and third is the step time (the first carries one-off start-up costs: measured 6.8 s against 4.3 s
    for later steps; the minimum of two resists a burst of other work on the machine). The number of epochs is
    sized so that training takes about :attr:`demo_train_seconds` (between :attr:`demo_min_epochs` and
    ``smoke_epochs``), the learning-rate schedule is stretched to it, and after the first epoch the remaining
    time is printed from the measured epoch. A tiny CPU run, not a benchmark.
    """

    smoke_epochs = 12  # at most
    smoke_iterations = 10
    smoke_val_iterations = 2
    demo_train_seconds = 240.0
    demo_min_epochs = 2

    def on_train_start(self):
        super().on_train_start()  # type: ignore[misc]
        import json
        import os
        import time

        record = os.path.join(self.output_folder, DEMO_SCHEDULE_FILE)  # type: ignore[attr-defined]
        if self.current_epoch > 0:  # resumed (--c): the sized epoch count is not in nnU-Net's checkpoint
            if os.path.isfile(record):
                with open(record) as f:
                    self.num_epochs = int(json.load(f)["num_epochs"])
                self.lr_scheduler.max_steps = self.num_epochs  # type: ignore[attr-defined]
            return

        self.train_step(next(self.dataloader_train))  # type: ignore[attr-defined]  # warm-up, not timed
        times = []
        for _ in range(2):
            start = time.perf_counter()
            self.train_step(next(self.dataloader_train))  # type: ignore[attr-defined]
            times.append(time.perf_counter() - start)
        step = min(times)
        self.num_epochs = demo_epochs(step, self.smoke_iterations, self.smoke_val_iterations,
                                      self.demo_train_seconds, self.demo_min_epochs, self.smoke_epochs)
        if self.is_ddp:  # type: ignore[attr-defined]  # all ranks must run the same epochs: rank 0's count
            from torch import distributed as dist

            count = [self.num_epochs]
            dist.broadcast_object_list(count, src=0)
            self.num_epochs = count[0]
        self.lr_scheduler.max_steps = self.num_epochs  # type: ignore[attr-defined]
        if self.local_rank == 0:  # type: ignore[attr-defined]
            with open(f"{record}.tmp", "w") as f:
                json.dump({"num_epochs": self.num_epochs, "step_seconds": step}, f)
            os.replace(f"{record}.tmp", record)
        self.print_to_log_file(  # type: ignore[attr-defined]
            f"Demo schedule: one training step took {step:.1f} s on this machine -> {self.num_epochs} epochs x "
            f"{self.smoke_iterations} iterations (training budget {self.demo_train_seconds:.0f} s)")

    def on_epoch_end(self):
        epoch = self.current_epoch  # type: ignore[attr-defined]
        super().on_epoch_end()  # type: ignore[misc]
        if epoch == 0 and self.num_epochs > 1:
            logger = self.logger  # type: ignore[attr-defined]
            took = logger.get_value("epoch_end_timestamps", step=-1) - logger.get_value("epoch_start_timestamps",
                                                                                          step=-1)
            left = took * (self.num_epochs - 1)
            self.print_to_log_file(  # type: ignore[attr-defined]
                f"Epoch time {took:.0f} s: about {int(left // 60)} min {int(left % 60)} s of training left "
                f"({self.num_epochs - 1} epochs), then the final validation")


def demo_epochs(step_seconds: float, iterations: int, val_iterations: int, budget_seconds: float,
                min_epochs: int, max_epochs: int) -> int:
    """Epochs of ``iterations`` training steps that fit ``budget_seconds``, a validation step costing 1/3 of one."""
    per_epoch = step_seconds * (iterations + val_iterations / 3) + 1.0  # + checkpoint and progress plot
    return max(min_epochs, min(max_epochs, int(budget_seconds // per_epoch)))


class nnUNetTrainer_smoke(SmokeSchedule, nnUNetTrainer):
    """Stock nnU-Net with the smoke schedule."""
