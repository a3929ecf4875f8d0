"""nnU-Net trainers of nnunet-kd, one concept per module.

nnU-Net finds them through ``nnUNet_extTrainer=$(nnunet-kd ext-path)``, which points at
``nnunet_kd/trainer_registry`` (re-exports only), never at this package.
"""
