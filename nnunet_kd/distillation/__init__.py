"""Seed 001: ensemble -> pseudo-labels -> distillation dataset (the student is trained by ``nnUNetTrainerDistill``).

* :mod:`nnunet_kd.distillation.pseudolabel` - nnU-Net predictions of several models/folds, averaged region
  probabilities, hard labels in the dataset convention, part-wise runs and their merge;
* :mod:`nnunet_kd.distillation.distill_dataset` - raw dataset = labelled cases + pseudo-labelled cases, with the
  record of which are pseudo-labelled.
"""
