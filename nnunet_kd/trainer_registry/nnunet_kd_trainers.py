"""Re-exports of every nnunet-kd trainer for nnU-Net's trainer search (``nnUNet_extTrainer``).

Only imports here; the classes live in ``nnunet_kd.trainers``.
"""

from nnunet_kd.trainers.smoke import nnUNetTrainer_smoke  # noqa: F401
