"""Folder handed to nnU-Net via ``nnUNet_extTrainer``.

nnU-Net imports every module in this folder by file path while looking for a trainer name, so the folder
holds only ``nnunet_kd_trainers.py``, which re-exports the trainer classes with absolute imports.
"""
