"""Predict and evaluate an any-subset model on every modality subset (the 15-subset comparison of RFNet/DeMoSeg).

For each subset, the cases' kept files (original ``_000X`` suffixes, taken from a folder holding all four files per
case) are predicted with nnU-Net's ``nnUNetPredictor`` set up exactly as stock ``nnUNetv2_predict`` would set up the
folder written by ``nnunet-kd export-subset`` (:func:`nnunet_kd.subsets.export.subset_model_files`: reduced
dataset.json / plans, the trainer's network with zero-filled missing channels) -- so nnU-Net's preprocessing (crop to
the non-zero region, normalisation) sees only the kept images, as it would for a hospital that acquired only those.
Predictions are scored with :func:`nnunet_kd.evaluation.evaluate.evaluate_folders` for the regions of the dataset
kind (:class:`nnunet_kd.brats.DatasetKind`; the ``brats_kind`` of the dataset.json in the reference folder, its
parent or the model folder, chosen as ``nnunet-kd evaluate`` chooses it: WT, TC, ET, and for post-treatment data
also NETC, SNFH and RC), with the kind's label convention and lesion-wise parameters by default.

Output folder (one sub-folder per subset, named like ``T1ce+FLAIR``)::

    OUT/subsets/<subset>/predictions/CASE.nii.gz + subset_prediction.json   (the latter written last)
    OUT/subsets/<subset>/evaluation/per_case.csv, summary.csv, summary.json
    OUT/subsets/<subset>/predict.log                                          (nnU-Net's messages)

A subset whose ``predictions`` folder exists with a ``subset_prediction.json`` for the same model, folds, checkpoint,
cases and test-time mirroring is not predicted again (predictions are built in a temporary folder and renamed into
place, so an interrupted run leaves no half-finished subset); its evaluation is reused when it was made against the
same reference folder, label conventions and dataset kind.

Public: :class:`SubsetModel`, :func:`load_subset_model`, :func:`subset_predictor`, :func:`case_files`,
:class:`SubsetResult`, :func:`evaluation_settings`, :func:`evaluate_subsets`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from nnunet_kd.errors import ConfigurationError, InputDataError
from nnunet_kd.evaluation.evaluate import (
    SUMMARY_JSON,
    EvaluationSettings,
    evaluate_folders,
    lesion_wise_parameters,
    load_evaluation,
    resolve_kind,
)
from nnunet_kd.model_folder import selected_folds
from nnunet_kd.safe_io import load_checkpoint
from nnunet_kd.subsets.catalog import all_subsets, parse_subset, subset_name
from nnunet_kd.subsets.export import (
    any_subset_record,
    load_model_folder,
    subset_model_files,
)
from nnunet_kd.subsets.input_files import check_inputs_fit, expected_inputs

SUBSETS_DIR = "subsets"
PREDICTIONS_DIR = "predictions"
EVALUATION_DIR = "evaluation"
PREDICTION_MARKER = "subset_prediction.json"
PREDICT_LOG = "predict.log"


@dataclass
class SubsetModel:
    """An any-subset model loaded once for predicting many subsets: its files, trainer class and fold weights."""

    folder: Path
    dataset_json: dict
    plans: dict
    configuration: str
    trainer_name: str
    trainer_class: type
    folds: list[str]
    checkpoint_name: str
    parameters: list[dict] = field(repr=False)
    mirror_axes: tuple[int, ...] | None = None

    @property
    def channel_suffixes(self) -> list[str]:
        return [f"_{int(k):04d}" for k in sorted(self.dataset_json["channel_names"], key=int)]


def _trainer_class(name: str) -> type:
    """The trainer class of a checkpoint: ours directly, any other through nnU-Net's search (``nnUNet_extTrainer``)."""
    from nnunet_kd.trainer_registry import nnunet_kd_trainers

    cls = getattr(nnunet_kd_trainers, name, None)
    if isinstance(cls, type):
        return cls
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError) as e:
        raise ConfigurationError(f"trainer {name} of the checkpoint cannot be found: {str(e).splitlines()[0]}") from None


def load_subset_model(model_folder: str | os.PathLike, folds: Sequence[str | int] | None = None,
                      checkpoint_name: str = "checkpoint_final.pth") -> SubsetModel:
    """Read an any-subset model folder and the student weights of its folds (default: all with a checkpoint)."""
    folder = Path(model_folder)
    dataset_json, plans = load_model_folder(folder)
    if any_subset_record(dataset_json) is None:
        subset_model_files(dataset_json, plans, "FLAIR", where=str(folder))  # raises the explanatory error
    chosen = selected_folds(folder, folds, checkpoint_name)
    parameters, first = [], None
    for fold in chosen:
        checkpoint = load_checkpoint(folder / f"fold_{fold}" / checkpoint_name)
        first = first or checkpoint
        parameters.append(checkpoint["network_weights"])
    assert first is not None  # selected_folds returns at least one fold
    axes = first.get("inference_allowed_mirroring_axes")
    return SubsetModel(folder, dataset_json, plans, first["init_args"]["configuration"], first["trainer_name"],
                       _trainer_class(first["trainer_name"]), chosen, checkpoint_name, parameters,
                       tuple(axes) if axes is not None else None)


def subset_predictor(model: SubsetModel, subset: Sequence[str], device=None, use_mirroring: bool = True,
                     tile_step_size: float = 0.5):
    """An ``nnUNetPredictor`` for ``subset`` of ``model``, as ``nnUNetv2_predict`` builds it for the exported folder."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    device = device if device is not None else torch.device("cpu")
    reduced_json, reduced_plans, record = subset_model_files(model.dataset_json, model.plans, subset,
                                                             where=str(model.folder))
    plans_manager = PlansManager(reduced_plans)
    configuration_manager = plans_manager.get_configuration(model.configuration)
    num_outputs = plans_manager.get_label_manager(reduced_json).num_segmentation_heads
    network = model.trainer_class.build_network_architecture(plans_manager, configuration_manager,
                                                             len(record.kept_indices), num_outputs,
                                                             enable_deep_supervision=False)
    network.load_state_dict(model.parameters[0])
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration_manager, model.parameters, reduced_json,
                                    model.trainer_name, model.mirror_axes)
    return predictor


def case_files(images_dir: str | os.PathLike, cases: Sequence[str], suffixes: Sequence[str],
               file_ending: str) -> dict[str, list[Path]]:
    """``{case: [images_dir/CASE_000X<file_ending> for each suffix]}``; a missing file is an :class:`InputDataError`."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputDataError(f"images folder {images_dir} does not exist")
    out: dict[str, list[Path]] = {}
    for case in cases:
        files = [images_dir / f"{case}{s}{file_ending}" for s in suffixes]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise InputDataError(f"case {case}: {missing[0]} is missing; the images folder must hold all "
                                 f"{len(suffixes)} files per case ({', '.join(suffixes)})")
        out[case] = files
    return out


def _reference_cases(gt_dir: Path, file_ending: str) -> list[str]:
    if not gt_dir.is_dir():
        raise InputDataError(f"reference folder {gt_dir} does not exist")
    pattern = re.compile(rf"^(.+){re.escape(file_ending)}$")
    cases = sorted(m.group(1) for p in gt_dir.iterdir() if p.is_file() and (m := pattern.match(p.name)))
    if not cases:
        raise InputDataError(f"reference folder {gt_dir} holds no *{file_ending} label maps")
    return cases


@dataclass
class SubsetResult:
    """One evaluated subset: its modalities, folders, evaluation summary and whether it came from the cache."""

    subset: tuple[str, ...]
    prediction_dir: Path
    evaluation_dir: Path
    summary: dict
    predicted: bool
    evaluated: bool

    @property
    def name(self) -> str:
        return subset_name(self.subset)


def _settings(model: SubsetModel, subset: tuple[str, ...], cases: Sequence[str], use_mirroring: bool) -> dict:
    return {"model_folder": str(model.folder.resolve()), "subset": list(subset), "folds": list(model.folds),
            "checkpoint": model.checkpoint_name, "trainer": model.trainer_name,
            "test_time_mirroring": bool(use_mirroring and model.mirror_axes is not None), "cases": list(cases)}


def _cached(pred_dir: Path, settings: dict) -> bool:
    marker = pred_dir / PREDICTION_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == settings
    except ValueError:
        return False


def _predict_subset(make_predictor: Callable[[], object], lists: list[list[str]], outputs: list[str], pred_dir: Path,
                    settings: dict, log_path: Path, num_processes_preprocessing: int, num_processes_export: int) -> None:
    """Predict into a temporary folder beside ``pred_dir``, write the marker last, then rename into place.

    nnU-Net's messages (predictor set-up included) go to ``log_path``."""
    from nnunet_kd.safe_io import staged_folder

    with staged_folder(pred_dir, replace=[pred_dir] if pred_dir.exists() else []) as tmp:
        with open(log_path, "w") as log, contextlib.redirect_stdout(log):
            predictor = make_predictor()
            truncated = [str(tmp / name) for name in outputs]
            if num_processes_preprocessing <= 0 or num_processes_export <= 0:
                predictor.predict_from_files_sequential(lists, truncated, overwrite=True)
            else:
                predictor.predict_from_files(lists, truncated, overwrite=True,
                                             num_processes_preprocessing=num_processes_preprocessing,
                                             num_processes_segmentation_export=num_processes_export)
        (tmp / PREDICTION_MARKER).write_text(json.dumps(settings, indent=2))


def _evaluation_matches(eval_dir: Path, gt_dir: Path, settings: EvaluationSettings) -> dict | None:
    if not (eval_dir / SUMMARY_JSON).is_file():
        return None
    try:
        _, summary = load_evaluation(eval_dir)
    except InputDataError:
        return None
    wanted = {"gt_dir": str(gt_dir.resolve()), "pred_convention": settings.pred_convention,
              "gt_convention": settings.gt_convention, "dataset_kind": settings.kind,
              "hd95_empty_penalty_mm": settings.hd95_penalty,
              # the lesion-wise procedure and every parameter of it (a JSON round trip: tuples become lists)
              "lesion_wise": json.loads(json.dumps(lesion_wise_parameters(settings)))}
    return summary if all(summary.get(k) == v for k, v in wanted.items()) else None


def evaluation_settings(model_folder: str | os.PathLike, gt_dir: str | os.PathLike, kind: str | None = None,
                        convention: str | None = None) -> EvaluationSettings:
    """How ``evaluate-subsets`` scores: the dataset kind (``kind``, else the ``brats_kind`` of the dataset.json in
    ``gt_dir``, its parent or the model folder, else that of ``convention``, else GLI), its regions, label
    convention (``convention`` for predictions and references, default the kind's canonical one) and lesion-wise
    parameters (the kind's task)."""
    from nnunet_kd.evaluation.lesionwise import TASK_PARAMETERS

    gt_dir, model_folder = Path(gt_dir), Path(model_folder)
    spec = resolve_kind(kind, (gt_dir / "dataset.json", gt_dir.parent / "dataset.json",
                               model_folder / "dataset.json"), (convention,))
    convention = convention or spec.canonical_convention
    settings = EvaluationSettings(pred_convention=convention, gt_convention=convention, kind=spec.name)
    if spec.task not in TASK_PARAMETERS:  # a procedure with its own values per region (BraTS 2024 post-treatment)
        return settings
    dilation, min_volume = TASK_PARAMETERS[spec.task]
    return replace(settings, lesion_dilation_iterations=dilation, lesion_volume_threshold_mm3=min_volume)


def evaluate_subsets(model_folder: str | os.PathLike, images_dir: str | os.PathLike, gt_dir: str | os.PathLike,
                     out_dir: str | os.PathLike, subsets: Sequence[Sequence[str]] | None = None,
                     folds: Sequence[str | int] | None = None, checkpoint_name: str = "checkpoint_final.pth",
                     device=None, use_mirroring: bool = True, convention: str | None = None,
                     num_processes_preprocessing: int = 0, num_processes_export: int = 0,
                     num_processes_evaluation: int = 1, progress: bool = True,
                     on_subset: Callable[[SubsetResult], None] | None = None,
                     kind: str | None = None) -> list[SubsetResult]:
    """Predict and evaluate every subset (default: all 15) of an any-subset model; returns one result per subset.

    ``images_dir`` holds all of the model's files per case (e.g. ``imagesTr`` / ``imagesTs``); the cases are those
    with a label map in ``gt_dir``, and each must have exactly the model's ``_000X`` files (checked before any
    prediction, as ``nnunet-kd check-inputs`` does). With ``num_processes_preprocessing`` or
    ``num_processes_export`` 0 prediction runs in this process (nnU-Net's sequential predictor), else with nnU-Net's
    worker processes. ``kind`` and ``convention`` set how predictions are scored (:func:`evaluation_settings`;
    by default from the dataset.json files). See the module docstring for the output folder and the cache.
    """
    from tqdm import tqdm

    subsets = list(dict.fromkeys(parse_subset(s) for s in subsets)) if subsets else all_subsets()
    if not subsets:
        raise ConfigurationError("no modality subset to evaluate")
    gt_dir, out = Path(gt_dir), Path(out_dir)
    blocking = next((p for p in [out, *out.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # refuse before minutes of prediction, not when the first subset is written
        raise InputDataError(f"cannot create output folder {out}: {blocking} is a file, not a folder")
    dataset_json, _ = load_model_folder(model_folder)  # JSON only: refuse wrong input files before loading weights
    file_ending = dataset_json["file_ending"]
    cases = _reference_cases(gt_dir, file_ending)
    scoring = evaluation_settings(model_folder, gt_dir, kind, convention)
    if any_subset_record(dataset_json) is not None:  # else load_subset_model says why the model does not fit
        # each labelled case must have exactly the model's files: an extra or misnamed one is refused, not ignored
        check_inputs_fit(expected_inputs(dataset_json), Path(images_dir), str(model_folder), only_cases=cases)
    model = load_subset_model(model_folder, folds, checkpoint_name)
    files = case_files(images_dir, cases, model.channel_suffixes, file_ending)
    # kept channels of each subset (fails on a bad subset before anything is predicted)
    kept = {subset: subset_model_files(model.dataset_json, model.plans, subset, where=str(model.folder))[2].kept_indices
            for subset in subsets}

    results: list[SubsetResult] = []
    with tqdm(subsets, desc="subsets", unit="subset", disable=not progress) as bar:
        for subset in bar:
            name = subset_name(subset)
            bar.set_postfix_str(name)
            folder = out / SUBSETS_DIR / name
            folder.mkdir(parents=True, exist_ok=True)
            pred_dir, eval_dir = folder / PREDICTIONS_DIR, folder / EVALUATION_DIR
            settings = _settings(model, subset, cases, use_mirroring)
            predicted = not _cached(pred_dir, settings)
            if predicted:
                shutil.rmtree(eval_dir, ignore_errors=True)
                lists = [[str(fs[i]) for i in kept[subset]] for fs in files.values()]
                _predict_subset(functools.partial(subset_predictor, model, subset, device, use_mirroring), lists, list(files), pred_dir, settings, folder / PREDICT_LOG,
                                num_processes_preprocessing, num_processes_export)
            summary = None if predicted else _evaluation_matches(eval_dir, gt_dir, scoring)
            evaluated = summary is None
            if summary is None:
                _, summary = evaluate_folders(pred_dir, gt_dir, eval_dir, settings=scoring,
                                              num_processes=num_processes_evaluation, progress=False,
                                              file_ending=file_ending)
            result = SubsetResult(subset, pred_dir, eval_dir, summary, predicted, evaluated)
            results.append(result)
            if on_subset is not None:
                on_subset(result)
    return results
