"""Re-exports of every nnunet-kd trainer for nnU-Net's trainer search (``nnUNet_extTrainer``).

Only imports here; the classes live in ``nnunet_kd.trainers``.
"""

from nnunet_kd.trainers.any_subset import (  # noqa: F401
    nnUNetTrainerBarlowKD_AnySubset,
    nnUNetTrainerBarlowKD_AnySubset_PixelKD,
    nnUNetTrainerBarlowKD_AnySubset_PixelKD_smoke,
    nnUNetTrainerBarlowKD_AnySubset_smoke,
    nnUNetTrainerStudentOnly_AnySubset,
)
from nnunet_kd.trainers.architectures import (  # noqa: F401
    nnUNetTrainerCascadedUNet,
    nnUNetTrainerCascadedUNet_smoke,
    nnUNetTrainerModalityEncoderUNet,
    nnUNetTrainerModalityEncoderUNet_smoke,
    nnUNetTrainerResidualUNet,
    nnUNetTrainerResidualUNet_smoke,
    nnUNetTrainerResidualUNet_VAE,
    nnUNetTrainerResidualUNet_VAE_smoke,
    nnUNetTrainerUNet,
    nnUNetTrainerUNet_smoke,
)
from nnunet_kd.trainers.barlow_kd import nnUNetTrainerBarlowKD  # noqa: F401
from nnunet_kd.trainers.barlow_kd_variants import (  # noqa: F401
    nnUNetTrainerBarlowKD_DetachTeacher,
    nnUNetTrainerBarlowKD_Flair,
    nnUNetTrainerBarlowKD_T1ce,
    nnUNetTrainerBarlowKD_T1ceFlair,
    nnUNetTrainerBarlowKD_T1ceT2,
    nnUNetTrainerBarlowKD_T1ceT2Flair,
    nnUNetTrainerBarlowKD_T1Flair,
    nnUNetTrainerBarlowKD_T2Flair,
    nnUNetTrainerStudentOnly,
)
from nnunet_kd.trainers.distill import (  # noqa: F401
    nnUNetTrainerCascadedUNetDistill,
    nnUNetTrainerDistill,
    nnUNetTrainerDistill_PseudoWeight05,
    nnUNetTrainerDistill_PseudoWeight05_smoke,
    nnUNetTrainerDistill_smoke,
    nnUNetTrainerResidualUNet_VAEDistill,
    nnUNetTrainerResidualUNetDistill,
    nnUNetTrainerResidualUNetDistill_PseudoWeight05,
    nnUNetTrainerResidualUNetDistill_PseudoWeight05_smoke,
    nnUNetTrainerResidualUNetDistill_smoke,
    nnUNetTrainerUNetDistill,
)
from nnunet_kd.trainers.frozen_teacher import (  # noqa: F401
    nnUNetTrainerBarlowKD_FrozenTeacher,
    nnUNetTrainerBarlowKD_FrozenTeacher_PixelKD,
    nnUNetTrainerBarlowKD_FrozenTeacher_smoke,
    nnUNetTrainerBarlowKD_WarmTeacher,
    nnUNetTrainerBarlowKD_WarmTeacher_smoke,
)
from nnunet_kd.trainers.pixel_kd import (  # noqa: F401
    nnUNetTrainerBarlowKD_PixelKD,
    nnUNetTrainerBarlowKD_PixelKD_smoke,
    nnUNetTrainerPixelKD,
    nnUNetTrainerPixelKD_smoke,
)
from nnunet_kd.trainers.smoke import nnUNetTrainer_smoke  # noqa: F401
from nnunet_kd.trainers.smoke_variants import (  # noqa: F401
    nnUNetTrainerBarlowKD_demo,
    nnUNetTrainerBarlowKD_smoke,
    nnUNetTrainerBarlowKD_T1Flair_smoke,
    nnUNetTrainerStudentOnly_demo,
    nnUNetTrainerStudentOnly_smoke,
)
