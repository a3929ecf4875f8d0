"""``_smoke`` / ``_tinysmoke`` (tests) and ``_demo`` (CPU demo) versions of the KD trainers; see :mod:`nnunet_kd.trainers.smoke`."""

from __future__ import annotations

from nnunet_kd.trainers.barlow_kd import nnUNetTrainerBarlowKD
from nnunet_kd.trainers.barlow_kd_variants import nnUNetTrainerBarlowKD_T1Flair, nnUNetTrainerStudentOnly
from nnunet_kd.trainers.smoke import DemoSchedule, SmokeSchedule, TinySmokeSchedule


class nnUNetTrainerBarlowKD_smoke(SmokeSchedule, nnUNetTrainerBarlowKD):
    pass


class nnUNetTrainerBarlowKD_tinysmoke(TinySmokeSchedule, nnUNetTrainerBarlowKD):
    """The KD trainer for 1 step without final validation (one tiny training per dataset kind in the tests)."""


class nnUNetTrainerStudentOnly_smoke(SmokeSchedule, nnUNetTrainerStudentOnly):
    pass


class nnUNetTrainerBarlowKD_T1Flair_smoke(SmokeSchedule, nnUNetTrainerBarlowKD_T1Flair):
    pass


class nnUNetTrainerBarlowKD_demo(DemoSchedule, nnUNetTrainerBarlowKD):
    pass


class nnUNetTrainerStudentOnly_demo(DemoSchedule, nnUNetTrainerStudentOnly):
    pass
