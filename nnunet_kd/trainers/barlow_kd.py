"""Single-stage missing-modality knowledge distillation (seed 000, Choi et al. 2023) as an nnU-Net trainer.

``nnUNetTrainerBarlowKD`` trains, from every batch and at the same time,

* a **teacher** nnU-Net on all channels of the dataset (T1, T1ce, T2, FLAIR) and
* a **student** nnU-Net on a subset of them (default T1ce + FLAIR, chosen by name, kept in channel order),

with ``loss = student DS loss + teacher_loss_weight * teacher DS loss + barlow_weight * Barlow Twins``, where the
DS (deep-supervision) losses are nnU-Net's own (Dice + BCE on WT/TC/ET for BraTS region training) and Barlow
Twins aligns the projected bottleneck features of the two networks (:mod:`nnunet_kd.losses.barlow_twins`).

Everything else is stock nnU-Net: plans, data loading and augmentation, 5-fold splits, poly LR, checkpoints,
``--c`` / ``--val`` / ``--val_best``. The student is ``self.network``: checkpoints store it as
``network_weights`` (what ``nnUNetv2_predict`` loads), pseudo-Dice and the final validation are the student's on
its own channels, and the model folder gets a reduced dataset.json / plans.json (:mod:`nnunet_kd.subsets.modalities`) so
stock prediction runs with only the student's files per case. Teacher, projectors and the teacher's pseudo-Dice
are extra: stored under ``checkpoint["nnunet_kd"]`` and logged as ``teacher_*`` keys (``progress_kd.png``).

Multi-GPU (DDP) training is refused: the teacher and projectors live outside nnU-Net's DDP wrapper.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch._dynamo import OptimizedModule

from nnunet_kd.losses.barlow_twins import BarlowTwinsLoss
from nnunet_kd.networks.projector import make_projector
from nnunet_kd.subsets.modalities import (
    ChannelSubset,
    attach_input_channel_check,
    recorded_subset,
    resolve_channels,
    student_dataset_json,
    student_plans,
)
from nnunet_kd.trainers.deployment_validation import validate_through_deployment
from nnunet_kd.trainers.kd_progress import plot_kd_progress
from nnunet_kd.trainers.student_channels import student_channel_dataset

#: Key of the extra state in nnU-Net checkpoints written by KD trainers.
CHECKPOINT_KEY = "nnunet_kd"


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module behind DDP / torch.compile wrappers."""
    module = network.module if hasattr(network, "module") and not isinstance(network, OptimizedModule) else network
    return module._orig_mod if isinstance(module, OptimizedModule) else module


class nnUNetTrainerBarlowKD(nnUNetTrainer):
    """Teacher (all channels) + student (``student_modalities``) trained together with a Barlow Twins latent loss."""

    #: Student input modalities by name (any order, any alias); kept in ascending channel order.
    student_modalities: tuple[str, ...] = ("T1ce", "FLAIR")
    #: False gives the student-only baseline (same student, no teacher, no Barlow Twins).
    use_teacher: bool = True
    teacher_loss_weight: float = 1.0
    barlow_weight: float = 0.1
    barlow_off_diagonal_weight: float = 5e-3
    #: Width of the 1x1x1 projectors; keep it <= batch size x bottleneck voxels (128 for BraTS plans).
    projector_dim: int = 64
    #: Stop Barlow Twins gradients into the teacher (the teacher then learns from its own DS loss only).
    detach_teacher_in_barlow: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            raise RuntimeError(f"{self.__class__.__name__} does not support multi-GPU (DDP) training: its teacher and "
                               f"projectors are not synchronised. Train each fold on one GPU (-num_gpus 1) and run "
                               f"folds in parallel instead.")
        self.full_dataset_json = dataset_json
        self.student_subset: ChannelSubset = resolve_channels(dataset_json["channel_names"], self.student_modalities)
        # nnU-Net sizes self.network from self.dataset_json and copies it into the model folder: give it the student's.
        self.dataset_json = student_dataset_json(dataset_json, self.student_subset)
        self.kd_modules = nn.ModuleDict()
        self.barlow_loss = BarlowTwinsLoss(self.barlow_off_diagonal_weight, detach_teacher=self.detach_teacher_in_barlow)
        self._latents: dict[str, torch.Tensor] = {}
        self._student_index = torch.tensor(self.student_subset.indices, dtype=torch.long)
        for key in self._kd_log_keys():
            self.logger.local_logger.my_fantastic_logging.setdefault(key, [])
        self.print_to_log_file(f"nnunet-kd: student channels {self.student_subset.describe()}; "
                               f"teacher {'on all channels' if self.use_teacher else 'disabled'}")

    # ------------------------------------------------------------------ network building
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """The plans' network, refusing inputs with the wrong number of channels with a readable error."""
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        subset = recorded_subset(plans_manager.plans)
        description = subset.describe() if subset is not None and len(subset.indices) == num_input_channels else None
        return attach_input_channel_check(network, num_input_channels, description)

    # ------------------------------------------------------------------ extension hooks
    @property
    def use_barlow(self) -> bool:
        return self.use_teacher and self.barlow_weight > 0

    def loss_weights(self) -> dict[str, float]:
        """Weight of every named loss term of :meth:`train_step`; each term is logged per epoch under its name.

        Subclasses adding a term extend this dict (and :meth:`distillation_terms`).
        """
        weights = {"student_seg_loss": 1.0}
        if self.use_teacher:
            weights["teacher_seg_loss"] = self.teacher_loss_weight
        if self.use_barlow:
            weights["barlow_loss"] = self.barlow_weight
        return weights

    def _kd_log_keys(self) -> tuple[str, ...]:
        teacher_keys = ("teacher_mean_fg_dice", "teacher_dice_per_class_or_region") if self.use_teacher else ()
        return tuple(self.loss_weights()) + teacher_keys

    def build_teacher(self) -> nn.Module:
        """The teacher network on all channels (trained from scratch here; other trainers may load one)."""
        n_channels = len(self.full_dataset_json["channel_names"])
        return self.build_network_architecture(self.plans_manager, self.configuration_manager, n_channels,
                                               self.label_manager.num_segmentation_heads,
                                               self.enable_deep_supervision)

    def kd_trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters besides the student's that the optimizer updates (teacher and projectors)."""
        return list(self.kd_modules.parameters())

    def teacher_forward(self, data: torch.Tensor):
        """Teacher outputs and bottleneck features for a full-channel batch."""
        return self._forward(self.kd_modules["teacher"], data, "teacher")

    def teacher_terms(self, teacher_out, target) -> dict[str, torch.Tensor]:
        """Loss terms of the teacher itself: its deep-supervision segmentation loss."""
        return {"teacher_seg_loss": self.loss(teacher_out, target)}

    def distillation_terms(self, student_out, teacher_out, student_latent: torch.Tensor,
                           teacher_latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Terms moving knowledge from teacher to student: Barlow Twins on the projected bottlenecks."""
        if not self.use_barlow:
            return {}
        # fp32 projectors on fp32 features: under CUDA autocast the bottlenecks arrive in fp16
        z_teacher = self.kd_modules["teacher_projector"](teacher_latent.float())
        z_student = self.kd_modules["student_projector"](student_latent.float())
        return {"barlow_loss": self.barlow_loss(z_teacher, z_student)}

    def initialize(self):
        super().initialize()
        self._capture_latent(self.network, "student")
        if self.use_teacher:
            teacher = self.build_teacher()
            modules = {"teacher": teacher}
            if self.use_barlow:
                bottleneck = int(self.configuration_manager.network_arch_init_kwargs["features_per_stage"][-1])
                spatial = len(self.configuration_manager.patch_size)
                modules["teacher_projector"] = make_projector(bottleneck, self.projector_dim, spatial)
                modules["student_projector"] = make_projector(bottleneck, self.projector_dim, spatial)
            self.kd_modules = nn.ModuleDict(modules).to(self.device)
            self._capture_latent(teacher, "teacher")
            extra = self.kd_trainable_parameters()
            if extra:  # the poly LR scheduler sets the learning rate of every parameter group
                self.optimizer.add_param_group({"params": extra})

    def _capture_latent(self, network: nn.Module, key: str) -> None:
        def keep_bottleneck(_module, _inputs, skips):
            self._latents[key] = skips[-1]

        unwrap(network).encoder.register_forward_hook(keep_bottleneck)

    def set_deep_supervision_enabled(self, enabled: bool):
        super().set_deep_supervision_enabled(enabled)
        if "teacher" in self.kd_modules:
            unwrap(self.kd_modules["teacher"]).decoder.deep_supervision = enabled

    # ------------------------------------------------------------------ training
    def student_input(self, data: torch.Tensor) -> torch.Tensor:
        """The student's channels of a full-channel batch (B, C, ...)."""
        return data.index_select(1, self._student_index.to(data.device))

    def _forward(self, network: nn.Module, x: torch.Tensor, key: str):
        output = network(x)
        return output, self._latents.pop(key)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.kd_modules.train()

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self.kd_modules.eval()

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) else \
            target.to(self.device, non_blocking=True)

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            student_out, student_latent = self._forward(self.network, self.student_input(data), "student")
            terms = {"student_seg_loss": self.loss(student_out, target)}
            if self.use_teacher:
                teacher_out, teacher_latent = self.teacher_forward(data)
                terms.update(self.teacher_terms(teacher_out, target))
        if self.use_teacher:  # outside autocast: statistics of the distillation terms in fp32
            terms.update(self.distillation_terms(student_out, teacher_out, student_latent, teacher_latent))
        weights = self.loss_weights()
        loss = sum(weights[name] * value for name, value in terms.items())

        params = [p for group in self.optimizer.param_groups for p in group["params"]]  # student + kd_trainable
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 12)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy(), **{name: value.item() for name, value in terms.items()}}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        collated = collate_outputs(train_outputs)
        for key in self.loss_weights():
            self.logger.log(key, float(np.mean(collated[key])), self.current_epoch)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict) -> dict:
        result = super().validation_step({**batch, "data": self.student_input(batch["data"])})
        if self.use_teacher:
            student = self.network
            self.network = self.kd_modules["teacher"]
            try:
                teacher_result = super().validation_step(batch)
            finally:
                self.network = student
            result.update({f"teacher_{k}": v for k, v in teacher_result.items()})
        self._latents.clear()  # bottlenecks captured by the hooks are only used in training
        return result

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        super().on_validation_epoch_end(val_outputs)
        if self.use_teacher:
            collated = collate_outputs(val_outputs)
            tp, fp, fn = (np.sum(collated[f"teacher_{k}_hard"], 0) for k in ("tp", "fp", "fn"))
            dice = [2 * i / (2 * i + j + k) if (2 * i + j + k) > 0 else float("nan") for i, j, k in zip(tp, fp, fn)]
            self.logger.log("teacher_mean_fg_dice", float(np.nanmean(dice)), self.current_epoch)
            self.logger.log("teacher_dice_per_class_or_region", dice, self.current_epoch)

    def on_epoch_end(self):
        if self.use_teacher:
            self.print_to_log_file("Teacher pseudo dice", [np.round(i, decimals=4) for i in
                                                            self.logger.get_value("teacher_dice_per_class_or_region",
                                                                                  step=-1)])
            if self.local_rank == 0:
                plot_kd_progress(self.logger.get_checkpoint(), os.path.join(self.output_folder, "progress_kd.png"))
        super().on_epoch_end()

    #: Final validation from the raw student files through nnU-Net's predictor (the Dice users get), see
    #: :mod:`nnunet_kd.trainers.deployment_validation`; False: from the 4-channel preprocessed arrays.
    validate_from_raw_files: bool = True

    def perform_actual_validation(self, save_probabilities: bool = False):
        """The student's final validation (limited-modality Dice), by default through the deployment path.

        ``validate_from_raw_files`` (default): each validation case is predicted from its raw student files as
        ``nnUNetv2_predict`` would (:mod:`nnunet_kd.trainers.deployment_validation`). False: nnU-Net's validation
        on the student's channels of the preprocessed 4-channel arrays (cropped/normalised with all channels).
        """
        if self.validate_from_raw_files:
            validate_through_deployment(self, save_probabilities)
            return
        full_dataset_class = self.dataset_class
        self.dataset_class = student_channel_dataset(full_dataset_class, self.student_subset.indices)
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self.dataset_class = full_dataset_class

    # ------------------------------------------------------------------ files for stock prediction
    def on_train_start(self):
        super().on_train_start()
        if self.local_rank == 0:
            from batchgenerators.utilities.file_and_folder_operations import save_json

            save_json(student_plans(self.plans_manager.plans, self.student_subset),
                      os.path.join(self.output_folder_base, "plans.json"), sort_keys=False)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if self.local_rank != 0 or self.disable_checkpointing or not self.use_teacher:
            return
        checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
        checkpoint[CHECKPOINT_KEY] = {
            "kd_modules": self.kd_modules.state_dict(),
            "student": self.student_subset.as_record(),
            "teacher_dataset_json": self.full_dataset_json,
            "teacher_plans": self.plans_manager.plans,
        }
        tmp = f"{filename}.tmp"
        torch.save(checkpoint, tmp)
        os.replace(tmp, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        if not self.use_teacher:
            return
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            self.print_to_log_file("WARNING: checkpoint has no teacher/projector state; they keep their current weights")
        else:
            self.kd_modules.load_state_dict(state["kd_modules"])
