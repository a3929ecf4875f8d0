"""Every nnunet-kd trainer name for nnU-Net's trainer search (``nnUNet_extTrainer``), loaded lazily.

nnU-Net 2.8 finds a trainer by importing each module of the ``nnUNet_extTrainer`` folder and asking it
``hasattr(module, name)``. Re-exporting the classes with imports made every look-up import every trainer module
(torch, nnU-Net, the KD losses, the architectures and more), which cost ~0.7 s of ``nnUNetv2_predict``'s start-up
for a KD student. Here importing the module is cheap: :data:`TRAINERS` only names where each class lives, and the
module-level ``__getattr__`` (PEP 562) imports ``nnunet_kd.trainers.<module>`` when nnU-Net (or ``from
nnunet_kd.trainer_registry.nnunet_kd_trainers import X``) asks for that class. An unknown name raises
AttributeError without importing anything, so nnU-Net's "Could not find requested nnunet trainer" error is kept.

Add a new trainer class to :data:`TRAINERS` under the module that defines it (tests/test_registration.py checks
that every trainer class of ``nnunet_kd.trainers`` is listed and that each listed name resolves).
"""

from __future__ import annotations

import importlib

#: module of ``nnunet_kd.trainers`` -> the trainer classes it defines that nnU-Net may be asked for
TRAINERS: dict[str, tuple[str, ...]] = {
    "any_subset": (
        "nnUNetTrainerBarlowKD_AnySubset",
        "nnUNetTrainerBarlowKD_AnySubset_PixelKD",
        "nnUNetTrainerBarlowKD_AnySubset_PixelKD_smoke",
        "nnUNetTrainerBarlowKD_AnySubset_smoke",
        "nnUNetTrainerStudentOnly_AnySubset",
    ),
    "architectures": (
        "nnUNetTrainerCascadedUNet",
        "nnUNetTrainerCascadedUNet_smoke",
        "nnUNetTrainerModalityEncoderUNet",
        "nnUNetTrainerModalityEncoderUNet_smoke",
        "nnUNetTrainerResidualUNet",
        "nnUNetTrainerResidualUNet_smoke",
        "nnUNetTrainerResidualUNet_VAE",
        "nnUNetTrainerResidualUNet_VAE_smoke",
        "nnUNetTrainerUNet",
        "nnUNetTrainerUNet_smoke",
    ),
    "barlow_kd": ("nnUNetTrainerBarlowKD",),
    "barlow_kd_variants": (
        "nnUNetTrainerBarlowKD_DetachTeacher",
        "nnUNetTrainerBarlowKD_Flair",
        "nnUNetTrainerBarlowKD_T1ce",
        "nnUNetTrainerBarlowKD_T1ceFlair",
        "nnUNetTrainerBarlowKD_T1ceT2",
        "nnUNetTrainerBarlowKD_T1ceT2Flair",
        "nnUNetTrainerBarlowKD_T1Flair",
        "nnUNetTrainerBarlowKD_T2Flair",
        "nnUNetTrainerStudentOnly",
    ),
    "distill": (
        "nnUNetTrainerCascadedUNetDistill",
        "nnUNetTrainerDistill",
        "nnUNetTrainerDistill_PseudoWeight05",
        "nnUNetTrainerDistill_PseudoWeight05_smoke",
        "nnUNetTrainerDistill_smoke",
        "nnUNetTrainerResidualUNet_VAEDistill",
        "nnUNetTrainerResidualUNetDistill",
        "nnUNetTrainerResidualUNetDistill_PseudoWeight05",
        "nnUNetTrainerResidualUNetDistill_PseudoWeight05_smoke",
        "nnUNetTrainerResidualUNetDistill_smoke",
        "nnUNetTrainerUNetDistill",
    ),
    "frozen_teacher": (
        "nnUNetTrainerBarlowKD_FrozenTeacher",
        "nnUNetTrainerBarlowKD_FrozenTeacher_PixelKD",
        "nnUNetTrainerBarlowKD_FrozenTeacher_smoke",
        "nnUNetTrainerBarlowKD_WarmTeacher",
        "nnUNetTrainerBarlowKD_WarmTeacher_smoke",
    ),
    "pixel_kd": (
        "nnUNetTrainerBarlowKD_PixelKD",
        "nnUNetTrainerBarlowKD_PixelKD_smoke",
        "nnUNetTrainerPixelKD",
        "nnUNetTrainerPixelKD_smoke",
    ),
    "smoke": ("nnUNetTrainer_smoke",),
    "smoke_variants": (
        "nnUNetTrainerBarlowKD_demo",
        "nnUNetTrainerBarlowKD_smoke",
        "nnUNetTrainerBarlowKD_T1Flair_smoke",
        "nnUNetTrainerBarlowKD_tinysmoke",
        "nnUNetTrainerStudentOnly_demo",
        "nnUNetTrainerStudentOnly_smoke",
    ),
}

_MODULE_OF = {name: module for module, names in TRAINERS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> type:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = getattr(importlib.import_module(f"nnunet_kd.trainers.{module}"), name)
    globals()[name] = cls  # later look-ups in this module object skip __getattr__
    return cls


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
