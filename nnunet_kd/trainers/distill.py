"""Students of seed 001's model distillation: train on labelled + pseudo-labelled cases, validate on real labels only.

:class:`DistillSplitMixin` works with any trainer (put it first in the bases). Its ``do_split`` reads the
pseudo-labelled case ids and pseudo-label sets that ``nnunet-kd make-distill-dataset`` recorded in dataset.json and

* builds (or reads) ``splits_final.json`` as a 5-fold split of the *real* cases only - the same folds nnU-Net made
  for the teacher models on the original dataset when those used nnU-Net's default split, because the real cases
  keep their identifiers;
* trains fold *k* on its real training cases plus the pseudo-labelled cases meant for fold *k*
  (:func:`nnunet_kd.distillation.distill_dataset.pseudo_cases_for_fold`): with per-fold pseudo-labels (one folder
  per fold, members of that fold only) exactly fold *k*'s, so no teacher that saw fold *k*'s validation cases
  labelled the student's training data; with one shared set, that set, and a one-line warning in the log when its
  members include folds other than *k* (those teachers trained on fold *k*'s validation cases, so the fold's
  validation Dice is optimistic);
* never validates on a pseudo-labelled case (also when a hand-made split file lists one in a validation set), so
  fold Dice is measured on real labels;
* ``fold all`` trains on everything and validates on the real cases.

``pseudo_label_weight`` (class attribute, default 1) weights the segmentation loss of pseudo-labelled samples
within a batch (per-sample loss, weighted mean; with ``batch_dice`` plans the Dice becomes per sample). The weights
are set from the batch's ``keys`` inside ``train_step``. Soft-label (probability) targets are not implemented.
Multi-GPU (DDP) training with ``pseudo_label_weight != 1`` is refused in ``__init__`` (one
:class:`~nnunet_kd.errors.ConfigurationError` line): the weighted mean divides by the batch's weight sum, and each
GPU would divide by its own share's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, save_json
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.crossval_split import generate_crossval_split
from torch import nn

from nnunet_kd.distillation.distill_dataset import PSEUDO_LABELLED_KEY, pseudo_cases_for_fold, pseudo_labelled_cases
from nnunet_kd.errors import ConfigurationError
from nnunet_kd.trainers.architectures import (
    AuxiliaryLoss,
    nnUNetTrainerCascadedUNet,
    nnUNetTrainerResidualUNet,
    nnUNetTrainerResidualUNet_VAE,
    nnUNetTrainerUNet,
)
from nnunet_kd.trainers.ddp import refuse_ddp
from nnunet_kd.trainers.smoke import SmokeSchedule

#: nnU-Net's seed and number of folds for its default cross-validation split.
SPLIT_SEED, N_FOLDS = 12345, 5


def distill_split(all_cases: list[str], pseudo: set[str], fold: int | str,
                  splits: list[dict] | None, use: set[str] | None = None) -> tuple[list[str], list[str]]:
    """(train, val) of ``fold``: real cases split by ``splits`` (or nnU-Net's default 5 folds); the pseudo-labelled
    cases in ``use`` (default: all of ``pseudo``) train, the others are left out; no pseudo case validates."""
    real = sorted(c for c in all_cases if c not in pseudo)
    wanted = pseudo if use is None else use
    pseudo_present = sorted(c for c in all_cases if c in pseudo and c in wanted)
    if fold == "all":
        return real + pseudo_present, real
    if splits is None:
        splits = generate_crossval_split(real, seed=SPLIT_SEED, n_splits=N_FOLDS)
    fold = int(fold)
    if fold >= len(splits):
        raise ConfigurationError(f"fold {fold} requested but the split has only {len(splits)} folds")
    val = sorted(c for c in splits[fold]["val"] if c not in pseudo)
    train = sorted(c for c in splits[fold]["train"] if c not in pseudo)
    return train + pseudo_present, val


class PerSampleWeightedLoss(nn.Module):
    """Weighted mean over the batch of ``loss`` computed per sample; plain ``loss`` when no weights are set."""

    def __init__(self, loss: nn.Module, weights: Callable[[], torch.Tensor | None]) -> None:
        super().__init__()
        self.loss = loss
        self._weights = weights

    def forward(self, output, target) -> torch.Tensor:
        weights = self._weights()
        if weights is None:
            return self.loss(output, target)

        def sample(x, i):
            return [t[i:i + 1] for t in x] if isinstance(x, (list, tuple)) else x[i:i + 1]

        losses = torch.stack([self.loss(sample(output, i), sample(target, i)) for i in range(len(weights))])
        return (losses * weights).sum() / weights.sum()


class DistillSplitMixin:
    """Pseudo-labelled cases always in training, validation only on real labels; optional pseudo-label weight."""

    pseudo_label_weight: float = 1.0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if self.pseudo_label_weight != 1.0:  # before nnU-Net creates the output folder
            refuse_ddp(type(self).__name__, "pseudo_label_weight weights the samples of a batch by the sum of their "
                                            "weights, and under DDP each GPU sees only its share of the batch")
        super().__init__(plans, configuration, fold, dataset_json, device)  # type: ignore[call-arg]

    def _pseudo_cases(self) -> set[str]:
        cases = pseudo_labelled_cases(self.dataset_json)  # type: ignore[attr-defined]
        if not cases:
            raise ConfigurationError(
                f"{type(self).__name__} needs a distillation dataset: dataset.json has no '{PSEUDO_LABELLED_KEY}' "
                f"list (build the dataset with `nnunet-kd make-distill-dataset`)")
        return set(cases)

    def do_split(self):
        pseudo = self._pseudo_cases()
        if self.dataset_class is None:  # type: ignore[has-type]
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)  # type: ignore[attr-defined]
        all_cases = sorted(self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))  # type: ignore
        missing = sorted(pseudo - set(all_cases))
        if missing:
            raise ConfigurationError(f"pseudo-labelled cases {missing} listed in dataset.json are not in "
                                     f"{self.preprocessed_dataset_folder}; run nnUNetv2_preprocess again")  # type: ignore
        splits = None
        if self.fold != "all":  # type: ignore[attr-defined]
            splits_file = join(self.preprocessed_dataset_folder_base, "splits_final.json")  # type: ignore
            if isfile(splits_file):
                self.print_to_log_file("Using splits from existing split file:", splits_file)  # type: ignore
                splits = load_json(splits_file)
            else:
                real = sorted(c for c in all_cases if c not in pseudo)
                splits = generate_crossval_split(real, seed=SPLIT_SEED, n_splits=N_FOLDS)
                self.print_to_log_file("Creating a 5-fold split of the real cases only:", splits_file)  # type: ignore
                save_json(splits, splits_file)
        use, warning = pseudo_cases_for_fold(self.dataset_json, self.fold)  # type: ignore[attr-defined]
        if warning and not getattr(self, "_leak_warned", False):
            self.print_to_log_file(warning)  # type: ignore[attr-defined]
            self._leak_warned = True
        train, val = distill_split(all_cases, pseudo, self.fold, splits, set(use))  # type: ignore[attr-defined]
        n_pseudo = len(set(train) & pseudo)
        self.print_to_log_file(f"Distillation split, fold {self.fold}: {len(train)} training cases "  # type: ignore
                               f"({n_pseudo} pseudo-labelled), {len(val)} validation cases (real labels only)")
        return train, val

    def _build_loss(self):
        loss = super()._build_loss()  # type: ignore[misc]
        if self.pseudo_label_weight == 1.0:
            return loss

        def weights() -> torch.Tensor | None:
            return getattr(self, "_batch_weights", None)

        if isinstance(loss, AuxiliaryLoss):  # weight the segmentation part, add the VAE loss once
            loss.loss = PerSampleWeightedLoss(loss.loss, weights)
            return loss
        return PerSampleWeightedLoss(loss, weights)

    def train_step(self, batch: dict) -> dict:
        if self.pseudo_label_weight == 1.0:
            return super().train_step(batch)  # type: ignore[misc]
        pseudo = self._pseudo_cases()
        self._batch_weights = torch.tensor([self.pseudo_label_weight if k in pseudo else 1.0 for k in batch["keys"]],
                                           dtype=torch.float32, device=self.device)  # type: ignore[attr-defined]
        try:
            return super().train_step(batch)  # type: ignore[misc]
        finally:
            self._batch_weights = None


class nnUNetTrainerDistill(DistillSplitMixin, nnUNetTrainer):
    """Stock nnU-Net network trained on labelled + pseudo-labelled cases, validated on real cases only."""


class nnUNetTrainerUNetDistill(DistillSplitMixin, nnUNetTrainerUNet):
    """Isensee U-Net student (see nnUNetTrainerDistill)."""


class nnUNetTrainerResidualUNetDistill(DistillSplitMixin, nnUNetTrainerResidualUNet):
    """Residual U-Net student, the seed's choice (best stand-alone model)."""


class nnUNetTrainerResidualUNet_VAEDistill(DistillSplitMixin, nnUNetTrainerResidualUNet_VAE):
    """Residual U-Net + VAE regulariser student."""


class nnUNetTrainerCascadedUNetDistill(DistillSplitMixin, nnUNetTrainerCascadedUNet):
    """Cascaded U-Net student."""


class nnUNetTrainerDistill_PseudoWeight05(nnUNetTrainerDistill):
    """Pseudo-labelled samples count half in the loss."""

    pseudo_label_weight = 0.5


class nnUNetTrainerResidualUNetDistill_PseudoWeight05(nnUNetTrainerResidualUNetDistill):
    """Residual U-Net student; pseudo-labelled samples count half in the loss."""

    pseudo_label_weight = 0.5


class nnUNetTrainerDistill_smoke(SmokeSchedule, nnUNetTrainerDistill):
    """nnUNetTrainerDistill with the smoke schedule (tests, CPU demos)."""


class nnUNetTrainerResidualUNetDistill_smoke(SmokeSchedule, nnUNetTrainerResidualUNetDistill):
    """nnUNetTrainerResidualUNetDistill with the smoke schedule (tests, CPU demos)."""


class nnUNetTrainerDistill_PseudoWeight05_smoke(SmokeSchedule, nnUNetTrainerDistill_PseudoWeight05):
    """nnUNetTrainerDistill_PseudoWeight05 with the smoke schedule (tests, CPU demos)."""


class nnUNetTrainerResidualUNetDistill_PseudoWeight05_smoke(SmokeSchedule,
                                                            nnUNetTrainerResidualUNetDistill_PseudoWeight05):
    """nnUNetTrainerResidualUNetDistill_PseudoWeight05 with the smoke schedule (tests, CPU demos)."""
