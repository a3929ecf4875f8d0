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

Choices that keep the student's numbers comparable with stock nnU-Net and ``nnUNetTrainerStudentOnly``:

* gradients are clipped at nnU-Net's norm 12 **per network** (student, teacher, each projector), so large teacher
  gradients never shrink the student's step (:meth:`~nnUNetTrainerBarlowKD.gradient_clip_groups`);
* nnU-Net's ``train_losses`` (``loss`` in progress.png) is the student's deep-supervision loss, like ``val_losses``;
  the weighted KD total is logged as ``kd_total_loss`` and every term under its own name;
* when nnU-Net compiles the student (``nnUNet_compile``), the teacher is compiled the same way.

A checkpoint is written once, atomically (temporary file, then ``os.replace``), with the KD state inside; ``--c`` /
``--val`` on a KD checkpoint without it stop with a :class:`~nnunet_kd.errors.ConfigurationError`.
Cascade configurations (``3d_cascade_fullres``) are refused in ``__init__``, before nnU-Net creates the output
folder: the previous stage's segmentation channels are not wired into teacher and student.

Multi-GPU (``-num_gpus N``, DDP) trains like one process on the global batch: teacher and projectors are
DDP-wrapped like the student, and Barlow Twins sees the embeddings of all ranks (:mod:`nnunet_kd.trainers.ddp`,
hooks :meth:`~nnUNetTrainerBarlowKD.wrap_kd_module_for_ddp` and :meth:`~nnUNetTrainerBarlowKD.gather_embeddings`).
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch import distributed as dist
from torch._dynamo import OptimizedModule

from nnunet_kd.errors import ConfigurationError
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
from nnunet_kd.trainers.ddp import (
    gather_with_grad,
    has_trainable_parameters,
    mean_over_ranks,
    sum_over_ranks,
    wrap_like_student,
)
from nnunet_kd.trainers.deployment_validation import validate_through_deployment
from nnunet_kd.trainers.kd_progress import plot_kd_progress
from nnunet_kd.trainers.student_channels import student_channel_dataset

#: Key of the extra state in nnU-Net checkpoints written by KD trainers.
CHECKPOINT_KEY = "nnunet_kd"
#: Logger key of the weighted sum of all loss terms (nnU-Net's ``train_losses`` is the student's DS loss).
TOTAL_LOSS_KEY = "kd_total_loss"


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
    #: Stop Barlow Twins gradients into the teacher *network*: its latent is detached before the teacher projector,
    #: so the projector still learns while the teacher learns from its own DS loss only.
    detach_teacher_in_barlow: bool = False
    #: nnU-Net's gradient-norm clip, applied to each network separately (see :meth:`gradient_clip_groups`).
    grad_clip_norm: float = 12.0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        refuse_cascade(plans, configuration, self.__class__.__name__)  # before nnU-Net creates the output folder
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.full_dataset_json = dataset_json
        self.student_subset: ChannelSubset = resolve_channels(dataset_json["channel_names"], self.student_modalities)
        # nnU-Net sizes self.network from self.dataset_json and copies it into the model folder: give it the student's.
        self.dataset_json = student_dataset_json(dataset_json, self.student_subset)
        self.kd_modules = nn.ModuleDict()
        self.barlow_loss = BarlowTwinsLoss(self.barlow_off_diagonal_weight)
        #: The KD modules as they are run: ``kd_modules``' plain modules, the teacher torch.compile'd like the student
        #: (:meth:`compile_teacher`) and, under DDP, DDP-wrapped (:meth:`wrap_kd_module_for_ddp`).
        self.kd_runners: dict[str, nn.Module] = {}
        #: The teacher as it is run (``kd_runners["teacher"]``).
        self.teacher_network: nn.Module | None = None
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
        return tuple(self.loss_weights()) + (TOTAL_LOSS_KEY,) + teacher_keys

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
        return self._forward(self.teacher_network, data, "teacher")

    def teacher_terms(self, teacher_out, target) -> dict[str, torch.Tensor]:
        """Loss terms of the teacher itself: its deep-supervision segmentation loss."""
        return {"teacher_seg_loss": self.loss(teacher_out, target)}

    def distillation_terms(self, student_out, teacher_out, student_latent: torch.Tensor,
                           teacher_latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Terms moving knowledge from teacher to student: Barlow Twins on the projected bottlenecks."""
        if not self.use_barlow:
            return {}
        # fp32 projectors on fp32 features: under CUDA autocast the bottlenecks arrive in fp16
        teacher_latent = teacher_latent.float()
        if self.detach_teacher_in_barlow:  # before the projector: the teacher projector still learns
            teacher_latent = teacher_latent.detach()
        z_teacher = self.kd_runners["teacher_projector"](teacher_latent)
        z_student = self.kd_runners["student_projector"](student_latent.float())
        return {"barlow_loss": self.barlow_loss(self.gather_embeddings(z_teacher), self.gather_embeddings(z_student))}

    def gather_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        """The embeddings of the global batch: under DDP, every rank's ``z`` concatenated in rank order, with
        gradients (so Barlow Twins is the single-process loss, see :mod:`nnunet_kd.trainers.ddp`); else ``z``."""
        return gather_with_grad(z) if self.is_ddp else z

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
            self._capture_latent(teacher, "teacher")  # before compiling: the hook is traced into the compiled graph
            runners = dict(self.kd_modules.items())
            runners["teacher"] = self.compile_teacher(teacher)
            if self.is_ddp:
                runners = {name: self.wrap_kd_module_for_ddp(name, module) for name, module in runners.items()}
            self.kd_runners = runners
            self.teacher_network = runners["teacher"]
            extra = self.kd_trainable_parameters()
            if extra:  # the poly LR scheduler sets the learning rate of every parameter group
                self.optimizer.add_param_group({"params": extra})

    def compile_teacher(self, teacher: nn.Module) -> nn.Module:
        """The teacher as it is run: ``torch.compile``'d exactly when nnU-Net compiles the student (``nnUNet_compile``).

        ``kd_modules`` keeps the plain module, so checkpoints and the optimizer see the same parameter names either way.
        """
        if not self._do_i_compile():
            return teacher
        self.print_to_log_file("Using torch.compile for the teacher...")
        return torch.compile(teacher)

    def wrap_kd_module_for_ddp(self, name: str, module: nn.Module) -> nn.Module:
        """KD module ``name`` as run under DDP: SyncBatchNorm + DDP like nnU-Net's student when it has trainable
        parameters; a module without (the frozen teacher) runs as it is, the same on every rank."""
        if not has_trainable_parameters(module):
            return module
        self.print_to_log_file(f"nnunet-kd: {name} synchronised across GPUs (DDP)")
        return wrap_like_student(module, self.device)

    def gradient_clip_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters whose gradient norm is clipped together: the student, then each KD module that is trained.

        One clip per network, as stock nnU-Net clips its one network: a large teacher gradient never shrinks the
        student's step (which would confound the comparison with ``nnUNetTrainerStudentOnly``).
        """
        trainable = {id(p) for p in self.kd_trainable_parameters()}
        groups = {"student": list(self.network.parameters())}
        for name, module in self.kd_modules.items():
            params = [p for p in module.parameters() if id(p) in trainable]
            if params:
                groups[name] = params
        return groups

    def clip_gradients(self) -> None:
        for params in self.gradient_clip_groups().values():
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm)

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

        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            self.clip_gradients()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self.clip_gradients()
            self.optimizer.step()
        # "loss" becomes nnU-Net's train_losses: the student's DS loss, comparable with val_losses and StudentOnly
        return {"loss": terms["student_seg_loss"].detach().cpu().numpy(), TOTAL_LOSS_KEY: loss.item(),
                **{name: value.item() for name, value in terms.items()}}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        collated = collate_outputs(train_outputs)
        for key in (*self.loss_weights(), TOTAL_LOSS_KEY):  # under DDP: the mean over all ranks, as train_losses
            value = mean_over_ranks(collated[key]) if self.is_ddp else float(np.mean(collated[key]))
            self.logger.log(key, value, self.current_epoch)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict) -> dict:
        result = super().validation_step({**batch, "data": self.student_input(batch["data"])})
        if self.use_teacher:
            student = self.network
            self.network = self.teacher_network
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
            if self.is_ddp:  # counts of all ranks, as nnU-Net's pseudo-Dice
                tp, fp, fn = sum_over_ranks(tp), sum_over_ranks(fp), sum_over_ranks(fn)
            dice = [2 * i / (2 * i + j + k) if (2 * i + j + k) > 0 else float("nan") for i, j, k in zip(tp, fp, fn)]
            self.logger.log("teacher_mean_fg_dice", float(np.nanmean(dice)), self.current_epoch)
            self.logger.log("teacher_dice_per_class_or_region", dice, self.current_epoch)

    def on_epoch_end(self):
        self.print_to_log_file(TOTAL_LOSS_KEY, np.round(self.logger.get_value(TOTAL_LOSS_KEY, step=-1), decimals=4))
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
        if self.is_ddp:  # every rank has written nnU-Net's full plans.json before rank 0 replaces it
            dist.barrier()
        if self.local_rank == 0:  # replaces nnU-Net's full plans.json in one step: never half-written
            save_json_atomic(student_plans(self.plans_manager.plans, self.student_subset),
                             os.path.join(self.output_folder_base, "plans.json"))

    # ------------------------------------------------------------------ checkpoints
    def nnunet_checkpoint_entries(self) -> dict:
        """The entries ``nnUNetTrainer.save_checkpoint`` writes (the student is ``network_weights``).

        Built here so the KD checkpoint is written once; ``tests/test_kd_train_step.py`` checks that the keys equal
        nnU-Net's own.
        """
        module = unwrap(self.network)
        return {
            "network_weights": module.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }

    def kd_checkpoint_state(self) -> dict:
        """What a KD checkpoint holds under :data:`CHECKPOINT_KEY`: teacher + projectors and the teacher's setup.

        Their optimizer state is in nnU-Net's ``optimizer_state`` (they are the optimizer's second parameter group).
        """
        return {
            "kd_modules": self.kd_modules.state_dict(),
            "student": self.student_subset.as_record(),
            "teacher_dataset_json": self.full_dataset_json,
            "teacher_plans": self.plans_manager.plans,
        }

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus the KD state, written once to a temporary file that replaces ``filename``."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = self.nnunet_checkpoint_entries()
        if self.use_teacher:
            checkpoint[CHECKPOINT_KEY] = self.kd_checkpoint_state()
        for stale in glob.glob(glob.escape(filename) + ".tmp-*"):  # left by a killed save
            os.remove(stale)
        tmp = f"{filename}.tmp-{os.getpid()}"
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, filename)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's ``load_checkpoint``, plus teacher and projectors; a KD checkpoint without them is refused."""
        kd_state = None
        if self.use_teacher:  # checked before anything is restored
            source = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "checkpoint"
            checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
                torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False, mmap=True)
            kd_state = checkpoint.get(CHECKPOINT_KEY)
            if not isinstance(kd_state, dict) or "kd_modules" not in kd_state:
                raise ConfigurationError(
                    f"{source} has no teacher/projector state (no '{CHECKPOINT_KEY}' entry), so {self.__class__.__name__} "
                    f"cannot resume or validate from it; remove it to train from the start, or use another checkpoint")
        super().load_checkpoint(filename_or_checkpoint)
        if kd_state is not None:
            try:
                self.kd_modules.load_state_dict(kd_state["kd_modules"])
            except RuntimeError as e:
                raise ConfigurationError(f"{source}: teacher/projector state does not fit {self.__class__.__name__} "
                                         f"({str(e).splitlines()[0]})") from None


def refuse_cascade(plans: dict, configuration: str, trainer_name: str) -> None:
    """Raise :class:`ConfigurationError` for cascade configurations (a previous stage's segmentation as input)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        previous = PlansManager(plans).get_configuration(configuration).previous_stage_name
    except (KeyError, RuntimeError, ValueError, TypeError):
        return  # nnU-Net reports unknown configurations itself
    if previous is not None:
        raise ConfigurationError(
            f"{trainer_name} does not support the cascade configuration {configuration} (previous stage "
            f"{previous}): its teacher and student would need the previous stage's segmentation as extra input "
            f"channels; train 3d_fullres (or 3d_lowres) instead")


def save_json_atomic(data, path: str) -> None:
    """Write ``data`` as JSON to a temporary file next to ``path``, then replace ``path`` with it."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=4)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
