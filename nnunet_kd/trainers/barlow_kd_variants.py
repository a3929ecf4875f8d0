"""Variants of the KD trainer, each overriding one attribute: student modality subsets and the student-only baseline.

Use them as ``nnUNetv2_train ID 3d_fullres FOLD -tr <name>``.
"""

from __future__ import annotations

from nnunet_kd.trainers.barlow_kd import nnUNetTrainerBarlowKD


class nnUNetTrainerBarlowKD_T1ceFlair(nnUNetTrainerBarlowKD):
    """The default subset, named explicitly: T1ce + FLAIR (seed 000's main setting)."""

    student_modalities = ("T1ce", "FLAIR")


class nnUNetTrainerBarlowKD_T1Flair(nnUNetTrainerBarlowKD):
    student_modalities = ("T1", "FLAIR")


class nnUNetTrainerBarlowKD_T2Flair(nnUNetTrainerBarlowKD):
    student_modalities = ("T2", "FLAIR")


class nnUNetTrainerBarlowKD_T1ceT2(nnUNetTrainerBarlowKD):
    student_modalities = ("T1ce", "T2")


class nnUNetTrainerBarlowKD_Flair(nnUNetTrainerBarlowKD):
    student_modalities = ("FLAIR",)


class nnUNetTrainerBarlowKD_T1ce(nnUNetTrainerBarlowKD):
    student_modalities = ("T1ce",)


class nnUNetTrainerBarlowKD_T1ceT2Flair(nnUNetTrainerBarlowKD):
    student_modalities = ("T1ce", "T2", "FLAIR")


class nnUNetTrainerBarlowKD_DetachTeacher(nnUNetTrainerBarlowKD):
    """Barlow Twins trains the student and both projectors, not the teacher network (its bottleneck is detached
    before the teacher projector); the teacher learns from its own segmentation loss only."""

    detach_teacher_in_barlow = True


class nnUNetTrainerStudentOnly(nnUNetTrainerBarlowKD):
    """Ablation baseline: the same student (T1ce + FLAIR) trained alone, no teacher, no Barlow Twins."""

    use_teacher = False
