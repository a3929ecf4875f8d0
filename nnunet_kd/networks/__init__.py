"""Network architectures of nnunet-kd, built from nnU-Net plans (see :class:`~nnunet_kd.networks.common.UNetSpec`).

Seed 001 (ensemble distillation) architectures:

* :class:`~nnunet_kd.networks.unet.IsenseeUNet` - 3D U-Net after Isensee et al. 2018;
* :class:`~nnunet_kd.networks.residual_unet.ResidualUNet` - after Myronenko 2018, optional VAE regulariser;
* :class:`~nnunet_kd.networks.cascaded_unet.CascadedUNet` - multi-scale cascade after Lachinov et al. 2018.

Not a seed model: :class:`~nnunet_kd.networks.modality_encoder_unet.ModalityEncoderUNet` (one encoder per
modality, shared decoder).

Import the submodules directly; this package imports no torch at import time.
"""
