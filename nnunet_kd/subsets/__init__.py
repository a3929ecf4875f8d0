"""Modality subsets: which of the four BraTS modalities a model takes and a case has.

One concept, several steps of the workflow, so one package:

- :mod:`~nnunet_kd.subsets.modalities`  a student's channels chosen by name, and its reduced dataset.json / plans;
- :mod:`~nnunet_kd.subsets.catalog`     the 15 non-empty subsets, parsing and random sampling for training;
- :mod:`~nnunet_kd.subsets.input_files` which ``_000X`` files a case holds against what a model expects;
- :mod:`~nnunet_kd.subsets.export`      a stock-predictable model folder for one subset of an any-subset model;
- :mod:`~nnunet_kd.subsets.evaluation`  predict and score an any-subset model on every subset;
- :mod:`~nnunet_kd.subsets.table`       the RFNet-style per-subset results table and heat map;
- :mod:`~nnunet_kd.subsets.routing`     which model predicts each case of a mixed folder (``nnunet-kd predict``);
- :mod:`~nnunet_kd.subsets.routed_prediction`  predicting the routed groups with nnU-Net's predictor.

Modules are imported by their full name (nothing is re-exported here) so that importing one does not pull in torch
or nnU-Net for the others.
"""
