"""Final validation of a student model through the deployment path: raw student files -> stock prediction.

Why this exists: nnU-Net's final validation predicts the *preprocessed training arrays*. For a KD student those
were cropped and normalised by nnU-Net with a non-zero mask built from **all four** channels, while
``nnUNetv2_predict`` given the student's two files per case builds the crop and the mask from **those two** only.
Wherever the modalities' non-zero extents differ (skull-stripping masks that differ per modality, a low-signal
rim in T1/T2), the student's validation inputs are not the inputs users give it, and the reported validation
Dice is not the Dice users get (measured in ``docs/kd_trainer.md``, ``benchmarks/deployment_gap.py``).

So a KD trainer's final validation (``perform_actual_validation``, also ``--val`` / ``--val_best``) predicts each
validation case from ``nnUNet_raw/DatasetXXX/imagesTr`` with the student's files only, through nnU-Net's own
code as stock prediction does: :class:`nnUNetPredictor` (initialised with the in-memory student, the student's
reduced plans and dataset.json, :mod:`nnunet_kd.subsets.modalities`) and its ``predict_from_files``, i.e. the
same preprocessor, sliding window and export as ``nnUNetv2_predict`` on the student's model folder. The result
(``fold_X/validation/CASE.nii.gz`` and ``summary.json`` from nnU-Net's ``compute_metrics_on_folder`` against the
same ``gt_segmentations`` as stock validation) is voxel-identical to that command's output for the same case
(tested in ``tests/test_deployment_validation.py``).

Under multi-GPU (DDP) training the cases are split across the ranks as nnU-Net's own final validation splits them
(``val_keys[rank::world_size]``): rank 0 creates the staging folder and tells the others its path, every rank
predicts its share into it, and after a barrier rank 0 computes the metrics and moves the folder into place (one
writer for the folder and ``summary.json``, nothing half-written). Splitting, rather than predicting everything on
rank 0 while the others wait, keeps the waits at the barrier short: NCCL aborts a collective that waits longer than
its timeout (10 minutes by default), which a BraTS validation fold predicted by one GPU would exceed. The network
predicted with is the plain student behind the DDP wrapper, so no rank waits for another during prediction.

Refused, with one line naming case and file: validation cases whose raw student files are missing (the trained
checkpoint stays; restore the files and rerun with ``--val``). Refused here too, whether or not the trainer refused
it when built: cascade configurations (the previous stage's segmentation would have to come from the student's
files as well). Not written: the ``predicted_next_stage`` exports of a low-resolution stage, for the same reason.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from nnunet_kd.errors import ConfigurationError, InputDataError
from nnunet_kd.paths import nnunet_raw
from nnunet_kd.safe_io import staged_folder
from nnunet_kd.subsets.modalities import student_plans


def refuse_cascade_validation(trainer) -> None:
    """Refuse configurations that take a previous stage's segmentation as input (``3d_cascade_fullres``)."""
    previous = trainer.configuration_manager.previous_stage_name
    if previous is not None:
        raise ConfigurationError(
            f"{trainer.__class__.__name__}: configuration {trainer.configuration_name!r} is a cascade stage (it takes "
            f"the segmentation of {previous!r} as input); KD trainers support only non-cascade configurations "
            f"(2d, 3d_fullres, 3d_lowres)")


def student_raw_files(trainer, case_ids: list[str]) -> dict[str, list[str]]:
    """Per validation case, the raw image files of the student's channels (in the student's channel order).

    Follows nnU-Net's raw layout: ``imagesTr/CASE_XXXX<file_ending>``, or the ``dataset`` key of dataset.json.
    Raises :class:`InputDataError` naming the first case and file that is missing.
    """
    dataset_json = trainer.full_dataset_json
    raw_folder = nnunet_raw() / trainer.plans_manager.dataset_name
    ending = dataset_json["file_ending"]
    indices = trainer.student_subset.indices
    listed = None
    if "dataset" in dataset_json:
        listed = get_filenames_of_train_images_and_targets(str(raw_folder), copy.deepcopy(dataset_json))
    files: dict[str, list[str]] = {}
    for case in case_ids:
        if listed is not None:
            if case not in listed:
                raise InputDataError(f"final validation: case {case} is not listed in the 'dataset' key of "
                                     f"{raw_folder / 'dataset.json'}")
            paths = [listed[case]["images"][i] for i in indices]
        else:
            paths = [str(raw_folder / "imagesTr" / f"{case}_{i:04d}{ending}") for i in indices]
        for path in paths:
            if not os.path.isfile(path):
                raise InputDataError(
                    f"final validation: raw student file of case {case} missing: {path} (the student is validated "
                    f"from its raw files as nnUNetv2_predict would run it; checkpoints are saved: restore the file "
                    f"and rerun nnUNetv2_train with --val)")
        files[case] = paths
    return files


def student_predictor(trainer) -> nnUNetPredictor:
    """nnU-Net's predictor set up as ``nnUNetv2_predict`` would be on the student's model folder, on the live network.

    Same settings as nnU-Net's final validation and ``nnUNetv2_predict``'s defaults (step 0.5, Gaussian, test-time
    mirroring over the trainer's allowed axes); plans and dataset.json are the reduced ones of the model folder.
    """
    plans_manager = PlansManager(student_plans(trainer.plans_manager.plans, trainer.student_subset))
    configuration_manager = plans_manager.get_configuration(trainer.configuration_name)
    network = trainer.network
    if isinstance(network, DistributedDataParallel):  # predict with the student behind DDP: no collectives
        network = network.module
    plain = network._orig_mod if hasattr(network, "_orig_mod") else network
    weights = copy.deepcopy(plain.state_dict())  # what nnUNetv2_predict loads from checkpoint["network_weights"]
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=True, device=trainer.device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration_manager, [weights], trainer.dataset_json,
                                    trainer.__class__.__name__, trainer.inference_allowed_mirroring_axes)
    return predictor


def validate_through_deployment(trainer, save_probabilities: bool = False) -> dict | None:
    """The trainer's final validation from the raw student files (see the module docstring); returns the metrics
    (on rank 0; None on the other ranks of a DDP run)."""
    refuse_cascade_validation(trainer)
    _, val_keys = trainer.do_split()
    val_keys = sorted(val_keys)
    files = student_raw_files(trainer, val_keys)  # refuse before anything is written

    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    if trainer.configuration_manager.next_stage_names is not None:
        trainer.print_to_log_file("nnunet-kd: predicted_next_stage is not written (cascades are not supported by "
                                  "KD trainers)")
    trainer.print_to_log_file(f"nnunet-kd: final validation of the student from its raw files "
                              f"({trainer.student_subset.describe()}) through nnU-Net's predictor, as nnUNetv2_predict")
    predictor = student_predictor(trainer)
    target = Path(trainer.output_folder) / "validation"
    rank, world = (dist.get_rank(), dist.get_world_size()) if trainer.is_ddp else (0, 1)
    mine = val_keys[rank::world]  # nnU-Net's split of the validation cases across ranks
    if rank != 0:
        path: list = [None]
        dist.broadcast_object_list(path, src=0)  # rank 0's staging folder
        predict_cases(trainer, predictor, files, mine, Path(path[0]), save_probabilities)
        dist.barrier()  # rank 0 computes the metrics once every rank's cases are written
        _restore_training_state(trainer)
        return None
    label_manager = trainer.label_manager
    with staged_folder(target, replace=[target] if target.exists() else []) as tmp:
        if world > 1:
            dist.broadcast_object_list([str(tmp)], src=0)
        predict_cases(trainer, predictor, files, mine, tmp, save_probabilities)
        if world > 1:
            dist.barrier()
        metrics = compute_metrics_on_folder(
            os.path.join(trainer.preprocessed_dataset_folder_base, "gt_segmentations"), str(tmp),
            str(tmp / "summary.json"), trainer.plans_manager.image_reader_writer_class(),
            trainer.dataset_json["file_ending"],
            label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels,
            label_manager.ignore_label, chill=True, num_processes=default_num_processes)
        summary = tmp / "summary.json"  # name the final folder, not the staging one, in prediction_file
        summary.write_text(summary.read_text().replace(str(tmp), str(target)))
    for label in metrics["mean"]:
        trainer.logger.log_summary(f"final_val/class_{label}_dice", metrics["mean"][label]["Dice"])
    trainer.logger.log_summary("final_val/foreground_dice", metrics["foreground_mean"]["Dice"])
    trainer.print_to_log_file("Validation complete", also_print_to_console=True)
    trainer.print_to_log_file("Mean Validation Dice: ", metrics["foreground_mean"]["Dice"], also_print_to_console=True)
    _restore_training_state(trainer)
    return metrics


def predict_cases(trainer, predictor: nnUNetPredictor, files: dict[str, list[str]], cases: list[str], folder: Path,
                  save_probabilities: bool) -> None:
    """Predict ``cases`` from their raw student ``files`` into ``folder`` as ``nnUNetv2_predict`` would."""
    if not cases:  # more ranks than validation cases
        return
    for case in cases:
        trainer.print_to_log_file(f"predicting {case} from {', '.join(os.path.basename(f) for f in files[case])}")
    predictor.predict_from_files([files[c] for c in cases], [str(folder / c) for c in cases],
                                 save_probabilities=save_probabilities, overwrite=True,
                                 num_processes_preprocessing=default_num_processes,
                                 num_processes_segmentation_export=default_num_processes)


def _restore_training_state(trainer) -> None:
    trainer.set_deep_supervision_enabled(True)
    compute_gaussian.cache_clear()
    if trainer.device.type == "cuda":
        torch.cuda.empty_cache()
