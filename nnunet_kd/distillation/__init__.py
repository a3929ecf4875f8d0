"""Seed 001: ensemble -> pseudo-labels -> distillation dataset (the student is trained by ``nnUNetTrainerDistill``).

* :mod:`nnunet_kd.distillation.pseudolabel` - nnU-Net predictions of several models/folds, region probabilities
  averaged per model then across models, hard labels in the dataset convention, part-wise runs and their merge;
  per-fold pseudo-labels (members of one fold) for cross-validation without a leak;
* :mod:`nnunet_kd.distillation.distill_dataset` - raw dataset = labelled cases + checked, copied pseudo-labelled
  cases, with the record of which are pseudo-labelled and which fold each pseudo-label set belongs to.
"""
