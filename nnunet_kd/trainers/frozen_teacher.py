"""Two-stage KD: the teacher is an existing, already trained 4-channel nnU-Net model of the same dataset.

``nnUNetTrainerBarlowKD_FrozenTeacher``
    the classic set-up of ACN / ProtoKD / SMU-Net: the teacher is loaded from a stock nnU-Net model folder and kept
    **frozen** (eval mode, no gradients, not in the optimizer, its forward pass under ``torch.no_grad()`` and, on
    GPU, autocast). Student and projectors train with ``student DS loss + barlow_weight * Barlow Twins``; the
    teacher's pseudo-Dice is still logged (it should stay flat).
``nnUNetTrainerBarlowKD_FrozenTeacher_PixelKD``
    the same plus pixel-level KD of the frozen teacher's outputs (:mod:`nnunet_kd.trainers.pixel_kd`).
``nnUNetTrainerBarlowKD_WarmTeacher``
    seed 000's single-stage training, with the teacher *initialised* from that model instead of from scratch (it
    keeps training with its DS loss).

Which model is the teacher comes from the JSON written by ``nnunet-kd set-teacher``
(:mod:`nnunet_kd.trainers.teacher_config`); the teacher fold is the KD run's fold unless the JSON pins one. The JSON, the
checkpoint and its fit (dataset, plans, configuration, patch size, network, labels, channel names) are checked in
``__init__``, before nnU-Net writes anything, so a wrong teacher stops ``nnUNetv2_train`` at once with one
:class:`~nnunet_kd.errors.ConfigurationError` line. ``--c`` / ``--val`` need the teacher JSON and checkpoint too
(the teacher's weights are then replaced by those stored in the KD checkpoint).

Everything else (student, projectors, checkpoints, stock prediction, ``export-teacher``) is
:class:`~nnunet_kd.trainers.barlow_kd.nnUNetTrainerBarlowKD`'s.
"""

from __future__ import annotations

import torch
from torch import nn

from nnunet_kd.trainers.barlow_kd import nnUNetTrainerBarlowKD, unwrap
from nnunet_kd.trainers.pixel_kd import PixelKDMixin
from nnunet_kd.trainers.smoke import SmokeSchedule
from nnunet_kd.trainers.teacher_config import TeacherSource, check_weights_fit, resolve_teacher


class PretrainedTeacherKD(nnUNetTrainerBarlowKD):
    """KD whose teacher starts from the model named by ``nnunet-kd set-teacher``; frozen when ``freeze_teacher``."""

    #: True: the teacher is not trained (two-stage KD). False: it is only initialised from the model (warm start).
    freeze_teacher: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # checked before nnUNetTrainer.__init__ creates the output folder and log file
        source: TeacherSource = resolve_teacher(plans, configuration, fold, dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.teacher_source = source
        self.print_to_log_file(f"nnunet-kd: teacher {'frozen' if self.freeze_teacher else 'initialised'} from "
                               f"{source.describe()}")
        if source.fold != fold:
            self.print_to_log_file(f"WARNING: teacher fold {source.fold} differs from this run's fold {fold}: "
                                   f"this fold's validation cases may have been in the teacher's training data")

    # ------------------------------------------------------------------ teacher
    def build_teacher(self) -> nn.Module:
        """The plans' 4-channel network with the teacher checkpoint's ``network_weights`` (strict)."""
        teacher = super().build_teacher()
        weights = self.teacher_source.network_weights
        if not weights:
            raise RuntimeError("the teacher's weights were already loaded once; build_teacher is called only once")
        check_weights_fit(weights, unwrap(teacher).state_dict(), self.teacher_source.checkpoint_file)
        unwrap(teacher).load_state_dict(weights, strict=True)
        self.teacher_source.network_weights = {}  # the KD modules hold them from now on
        if self.freeze_teacher:
            teacher.requires_grad_(False)
            teacher.eval()
        return teacher

    def kd_trainable_parameters(self) -> list[nn.Parameter]:
        """Projectors (and, unless frozen, the teacher)."""
        params = super().kd_trainable_parameters()
        if not self.freeze_teacher:
            return params
        frozen = {id(p) for p in self.kd_modules["teacher"].parameters()}
        return [p for p in params if id(p) not in frozen]

    def loss_weights(self) -> dict[str, float]:
        weights = super().loss_weights()
        if self.freeze_teacher:
            weights.pop("teacher_seg_loss", None)
        return weights

    def teacher_forward(self, data: torch.Tensor):
        if not self.freeze_teacher:
            return super().teacher_forward(data)
        with torch.no_grad():  # train_step already runs this under autocast on GPU
            return super().teacher_forward(data)

    def teacher_terms(self, teacher_out, target) -> dict[str, torch.Tensor]:
        return {} if self.freeze_teacher else super().teacher_terms(teacher_out, target)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # puts all KD modules in train mode
        if self.freeze_teacher:
            self.kd_modules["teacher"].eval()


class nnUNetTrainerBarlowKD_FrozenTeacher(PretrainedTeacherKD):
    """Two-stage KD: frozen pre-trained teacher; student + projectors learn from DS loss + Barlow Twins."""

    freeze_teacher = True


class nnUNetTrainerBarlowKD_FrozenTeacher_PixelKD(PixelKDMixin, nnUNetTrainerBarlowKD_FrozenTeacher):
    """Two-stage KD with Barlow Twins plus pixel-level distillation of the frozen teacher's outputs."""


class nnUNetTrainerBarlowKD_WarmTeacher(PretrainedTeacherKD):
    """Single-stage KD whose teacher starts from a pre-trained model and keeps training."""

    freeze_teacher = False


class nnUNetTrainerBarlowKD_FrozenTeacher_smoke(SmokeSchedule, nnUNetTrainerBarlowKD_FrozenTeacher):
    pass


class nnUNetTrainerBarlowKD_WarmTeacher_smoke(SmokeSchedule, nnUNetTrainerBarlowKD_WarmTeacher):
    pass
