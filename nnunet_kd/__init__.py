"""nnunet-kd: an nnU-Net v2 plugin for brain tumour segmentation with missing MRI modalities.

Importing the package is cheap on purpose (no torch, no nnU-Net): the heavy modules are imported by the
subcommands and trainers that need them.
"""

__version__ = "0.1.0"
