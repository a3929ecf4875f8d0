"""One student for every modality subset: the KD trainer with random modality dropout on a 4-channel student.

``nnUNetTrainerBarlowKD_AnySubset`` trains, like ``nnUNetTrainerBarlowKD``, a full-modality teacher and a student
together (Barlow Twins on the bottlenecks, optionally pixel KD), but the student takes all four channels and, for
every training sample, keeps one random non-empty subset of them: the other channels are set to 0. The subset is
drawn uniformly over the 15 subsets, or with ``subset_weights`` (a class attribute: subset name -> weight, e.g.
``{"T1ce+FLAIR": 2, "FLAIR": 1}``; unnamed subsets get 0). The teacher always sees all four channels.

Zeroing happens in :meth:`student_input`, i.e. on the batch as the data loader delivers it: preprocessed
(z-score normalised per channel) and augmented. A missing modality is therefore a channel at its normalised mean
(0), the same value the exported single-subset models insert at prediction time.

Validation pseudo-Dice draws random subsets too (an estimate of the mean over subsets); nnU-Net's final validation
runs the student on all four channels. Per-subset numbers: ``nnunet-kd evaluate-subsets``; a model folder that stock
``nnUNetv2_predict`` runs with only some files per case: ``nnunet-kd export-subset`` (:mod:`nnunet_kd.subsets.export`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from nnunet_kd.brats import MODALITIES
from nnunet_kd.subsets.catalog import SubsetSampler, zero_missing_channels
from nnunet_kd.subsets.export import ANY_SUBSET_KEY, attach_zero_fill, zero_fill_record
from nnunet_kd.subsets.modalities import RECORD_KEY
from nnunet_kd.trainers.barlow_kd import nnUNetTrainerBarlowKD
from nnunet_kd.trainers.pixel_kd import PixelKDMixin
from nnunet_kd.trainers.smoke import SmokeSchedule


class AnySubsetMixin:
    """Student on all channels with one random non-empty subset kept per sample (put it before the KD trainer)."""

    student_modalities: tuple[str, ...] = MODALITIES
    #: ``None``: uniform over all non-empty subsets; else {subset name: weight}, unnamed subsets never drawn.
    subset_weights: Mapping[str, float] | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)  # type: ignore[call-arg]
        self.subset_sampler = SubsetSampler(self.student_subset.names, self.subset_weights)  # type: ignore[attr-defined]
        record = self.dataset_json.setdefault(RECORD_KEY, {})  # type: ignore[attr-defined]
        record[ANY_SUBSET_KEY] = {
            "subsets": self.subset_sampler.names,
            "probabilities": list(self.subset_sampler.probabilities),
            "missing_channels": "zero after normalisation",
        }
        record["note"] = ("nnunet-kd any-subset model: give each case all files listed in student.file_suffixes, or "
                          "write a model for fewer files with `nnunet-kd export-subset THIS_FOLDER --keep T2,FLAIR`")
        self.print_to_log_file(  # type: ignore[attr-defined]
            "nnunet-kd: any-subset student; subsets drawn per sample with probabilities " + ", ".join(
                f"{n} {p:.3f}" for n, p in zip(self.subset_sampler.names, self.subset_sampler.probabilities)))

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        """The plans' network; for an exported subset model, the 4-channel network behind a zero-filling input hook."""
        record = zero_fill_record(plans_manager.plans)
        if record is None:
            return super().build_network_architecture(  # type: ignore[misc]
                plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision)
        network = super().build_network_architecture(  # type: ignore[misc]
            plans_manager, configuration_manager, record.num_model_channels, num_output_channels,
            enable_deep_supervision)
        return attach_zero_fill(network, record)

    def student_input(self, data: torch.Tensor) -> torch.Tensor:
        """All channels of the (normalised) batch, with the channels outside each sample's random subset set to 0."""
        keep = self.subset_sampler.sample(data.shape[0], device=data.device)
        return zero_missing_channels(data, keep)


class nnUNetTrainerBarlowKD_AnySubset(AnySubsetMixin, nnUNetTrainerBarlowKD):
    """Teacher on all channels + one 4-channel student for all 15 modality subsets, Barlow Twins."""


class nnUNetTrainerBarlowKD_AnySubset_PixelKD(AnySubsetMixin, PixelKDMixin, nnUNetTrainerBarlowKD):
    """As :class:`nnUNetTrainerBarlowKD_AnySubset`, plus pixel-level distillation of the outputs."""


class nnUNetTrainerStudentOnly_AnySubset(AnySubsetMixin, nnUNetTrainerBarlowKD):
    """Ablation baseline: the 4-channel any-subset student trained alone (modality dropout, no teacher, no KD)."""

    use_teacher = False


class nnUNetTrainerBarlowKD_AnySubset_smoke(SmokeSchedule, nnUNetTrainerBarlowKD_AnySubset):
    pass


class nnUNetTrainerBarlowKD_AnySubset_PixelKD_smoke(SmokeSchedule, nnUNetTrainerBarlowKD_AnySubset_PixelKD):
    pass
