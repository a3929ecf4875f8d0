"""A distillation dataset: the labelled cases of a raw dataset plus pseudo-labelled cases (seed 001).

:func:`build_distill_dataset` writes ``$nnUNet_raw/DatasetYYY_NAME`` with

* ``imagesTr``/``labelsTr``: every labelled case of the source dataset and every ``ok`` pseudo-labelled case of one
  or more ``nnunet-kd pseudolabel`` output folders. Labels are always **copied** (small; a later pseudolabel run
  into the same folder cannot change the labels under an existing dataset); images are symlinked, or copied with
  ``copy=True``. Each pseudo-label is checked first: it must be the file its ``pseudolabels.json`` describes
  (sha256), complete, hold integer values of the dataset's label set, and have its image's geometry.
* ``dataset.json``: the source's, with ``numTraining`` updated, every pseudo-labelled case id under
  :data:`PSEUDO_LABELLED_KEY`, the pseudo-label sets (which cases came from which folder, and the folds of its
  ensemble members) under :data:`PSEUDO_LABEL_SETS_KEY` and provenance under :data:`PROVENANCE_KEY`. nnU-Net
  copies dataset.json into the preprocessed and results folders, so ``nnUNetTrainerDistill`` reads them there.

Cross-validation without a leak: ensemble members of fold *j* were trained on the validation cases of every other
fold, so a student of fold *k* must learn from pseudo-labels of fold-*k* members only. Give one pseudo-label folder
per fold (``pseudolabel --fold k``): the cases of the folder of fold *k* get ids ``CASE__plfold<k>`` and only
the fold-*k* student trains on them (:func:`pseudo_cases_for_fold`). With a single folder its cases keep their ids
and every fold trains on them; the trainer warns when its members include other folds than the one trained.

Labelled cases keep their identifiers, so nnU-Net's default 5-fold split of the real cases is the same as the
teacher models' default split. The dataset is built in a staged folder next to the target and renamed into place.

Public functions: :func:`build_distill_dataset`, :func:`pseudo_labelled_cases`, :func:`pseudo_label_sets`,
:func:`pseudo_cases_for_fold`, :func:`resolve_raw_dataset`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_kd.dataset_conversion.convert import dataset_folder_name, existing_datasets
from nnunet_kd.distillation.pseudolabel import STATUS_EMPTY, STATUS_OK, file_sha256, list_cases, load_report
from nnunet_kd.errors import ConfigurationError, InputDataError, NnunetKDError
from nnunet_kd.nifti import ImageInfo, geometry_mismatch, read_image
from nnunet_kd.safe_io import read_json_object, staged_folder

#: dataset.json key listing the pseudo-labelled case identifiers.
PSEUDO_LABELLED_KEY = "nnunet_kd_pseudo_labelled"
#: dataset.json key listing the pseudo-label sets: ``{"fold", "member_folds", "cases", "pseudolabels"}`` each.
PSEUDO_LABEL_SETS_KEY = "nnunet_kd_pseudo_label_sets"
#: dataset.json key with where the distillation dataset came from.
PROVENANCE_KEY = "nnunet_kd_distillation"
#: Suffix of a pseudo-labelled case id from the pseudo-label folder of fold k (several folders given).
FOLD_CASE_SUFFIX = "__plfold"


def pseudo_labelled_cases(dataset_json: Mapping) -> list[str]:
    """Pseudo-labelled case ids recorded in a distillation dataset's dataset.json (empty list if none)."""
    return sorted(str(c) for c in dataset_json.get(PSEUDO_LABELLED_KEY, []))


def pseudo_label_sets(dataset_json: Mapping) -> list[dict]:
    """The pseudo-label sets of a distillation dataset; a dataset of older nnunet-kd versions is one shared set."""
    sets = dataset_json.get(PSEUDO_LABEL_SETS_KEY)
    if sets:
        return [dict(s, cases=sorted(s["cases"])) for s in sets]
    members = dataset_json.get(PROVENANCE_KEY, {}).get("members", [])
    folds = sorted({str(m["fold"]) for m in members if isinstance(m, Mapping) and "fold" in m})
    return [{"fold": folds[0] if len(folds) == 1 else None, "member_folds": folds,
             "cases": pseudo_labelled_cases(dataset_json), "pseudolabels": None}]


def pseudo_cases_for_fold(dataset_json: Mapping, fold: int | str) -> tuple[list[str], str | None]:
    """The pseudo-labelled cases fold ``fold`` trains on, and a one-line leak warning (None when clean).

    * a set made by members of this fold only: its cases (clean);
    * else a single set: its cases, with a warning when its members include other folds (they were trained on this
      fold's validation cases, so validation Dice is optimistic);
    * fold ``all``: every set (no validation to protect);
    * several per-fold sets but none for this fold: :class:`ConfigurationError`.
    """
    fold = str(fold)
    sets = pseudo_label_sets(dataset_json)
    own = [s for s in sets if s.get("fold") == fold]
    if own:
        return sorted(c for s in own for c in s["cases"]), None
    if fold == "all":
        return sorted(c for s in sets for c in s["cases"]), None
    if len(sets) > 1:
        have = ", ".join(str(s.get("fold")) for s in sets)
        raise ConfigurationError(
            f"this distillation dataset has pseudo-labels for folds {have} but not for fold {fold}; pseudo-label "
            f"with fold-{fold} members (nnunet-kd pseudolabel --fold {fold}) and rebuild it with every fold's folder")
    (only,) = sets
    other = [f for f in only.get("member_folds", []) if f != fold]
    if not only.get("member_folds"):
        return only["cases"], (f"WARNING: the folds of the ensemble members behind these pseudo-labels are not "
                               f"recorded; if they include folds other than {fold}, fold {fold}'s validation Dice is "
                               f"optimistic (use per-fold pseudo-labels: nnunet-kd pseudolabel --fold {fold})")
    if other:
        return only["cases"], (f"WARNING: fold {fold} trains on pseudo-labels from ensemble members of fold(s) "
                               f"{', '.join(other)}, which were trained on fold {fold}'s validation cases, so its "
                               f"validation Dice is optimistic; for clean cross-validation use per-fold "
                               f"pseudo-labels (nnunet-kd pseudolabel --fold {fold}, docs/seed001.md)")
    return only["cases"], None


def resolve_raw_dataset(dataset: str | int | Path, raw_root: Path | None = None) -> Path:
    """Raw dataset folder of an id (``517``), a name (``Dataset517_X``) or a path."""
    from nnunet_kd.paths import nnunet_raw

    text = str(dataset)
    path = Path(text)
    if path.is_dir() and (path / "dataset.json").is_file():
        return path.resolve()
    root = raw_root if raw_root is not None else nnunet_raw()
    if text.isdigit():
        found = existing_datasets(root, int(text))
        if len(found) != 1:
            raise ConfigurationError(f"dataset id {text}: found {len(found)} folders Dataset{int(text):03d}_* in {root}")
        return found[0]
    if (root / text / "dataset.json").is_file():
        return root / text
    raise ConfigurationError(f"no raw dataset '{text}' (not a folder with dataset.json, nor an id or name in {root})")


def _place(src: Path, dst: Path, copy: bool) -> None:
    if not src.is_file():
        raise InputDataError(f"missing file {src}")
    if copy:
        shutil.copyfile(src, dst)
    else:
        os.symlink(src.resolve(), dst)


def label_values(dataset_json: Mapping) -> set[int]:
    """Every integer label value that dataset.json's ``labels`` use (region lists included)."""
    values: set[int] = set()
    for value in dataset_json.get("labels", {}).values():
        values.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return values


def check_pseudo_label(case: str, label: Path, image: Path, allowed: set[int], expected_sha256: str,
                       report: Path) -> None:
    """Refuse (one line naming case and file) a pseudo-label that is not the file its report describes, is
    incomplete, holds non-integer or unknown values, or does not share its image's geometry."""
    if not label.is_file():
        raise InputDataError(f"case {case}: pseudo-label {label} is missing")
    if file_sha256(label) != expected_sha256:
        raise InputDataError(f"case {case}: pseudo-label {label} is not the file {report} describes (changed after "
                             f"the report was written); run nnunet-kd pseudolabel into that folder again")
    seg = read_image(label, case, "pseudo-label")
    arr = sitk.GetArrayViewFromImage(seg)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            shown = ", ".join(f"{v:g}" for v in np.unique(arr[bad])[:5])
            raise InputDataError(f"case {case}: pseudo-label {label} has non-integer label values {shown}")
    unexpected = sorted(set(np.unique(arr).astype(np.int64).tolist()) - allowed)
    if unexpected:
        raise InputDataError(f"case {case}: pseudo-label {label} has label value(s) {unexpected}, not in the "
                             f"dataset's labels {sorted(allowed)}")
    reference = sitk.ImageFileReader()
    reference.SetFileName(str(image))
    try:
        reference.ReadImageInformation()
    except RuntimeError as e:
        raise InputDataError(f"case {case}: cannot read image {image}: {str(e).strip().splitlines()[-1]}") from None
    mismatch = geometry_mismatch(ImageInfo(reference), seg)
    if mismatch:
        raise InputDataError(f"case {case}: pseudo-label {label} does not fit its image {image}: {mismatch}")


def _pseudo_sets(folders: Sequence[Path]) -> list[tuple[Path, dict, str | None]]:
    """(folder, report, fold of its members if they are all of one fold) per pseudo-label folder."""
    result = []
    for folder in folders:
        report = load_report(folder)
        folds = sorted({str(f) for f in report["folds"]})
        result.append((Path(folder), report, folds[0] if len(folds) == 1 else None))
    if len(result) > 1:
        seen: dict[str, Path] = {}
        for folder, report, fold in result:
            if fold is None:
                raise ConfigurationError(
                    f"{folder} was pseudo-labelled by members of folds {', '.join(report['folds'])}; with several "
                    f"pseudo-label folders each must come from members of one fold (nnunet-kd pseudolabel --fold K)")
            if fold in seen:
                raise ConfigurationError(f"{seen[fold]} and {folder} are both pseudo-labels of fold {fold}")
            seen[fold] = folder
    return result


def build_distill_dataset(source: str | int | Path, pseudolabels: str | Path | Sequence[str | Path], dataset_id: int,
                          name: str | None = None, images: str | Path | None = None, copy: bool = False,
                          include_empty: bool = False, overwrite: bool = False,
                          raw_root: str | Path | None = None) -> Path:
    """Write the distillation dataset ``DatasetYYY_NAME`` and return its folder.

    ``source``: the labelled raw dataset (id, name or folder); ``pseudolabels``: one ``nnunet-kd pseudolabel``
    output folder, or one per fold (each made by members of one fold, ``pseudolabel --fold K``), each with its
    merged ``pseudolabels.json``; ``images``: the unlabelled images (default: the folder each report recorded).
    Cases whose pseudo-label is ``empty`` are left out unless ``include_empty``; ``unusable`` cases are always left
    out. ``name`` defaults to the source name + ``Distill``. Bad input raises one-line errors; nothing is written
    then.
    """
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    from nnunet_kd.paths import check_dataset_id_free, nnunet_raw

    folders = [Path(pseudolabels)] if isinstance(pseudolabels, (str, Path)) else [Path(p) for p in pseudolabels]
    if not folders:
        raise ConfigurationError("no pseudo-label folder given")
    root = Path(raw_root) if raw_root is not None else nnunet_raw()
    source_dir = resolve_raw_dataset(source, root)
    source_json = read_json_object(source_dir / "dataset.json", "dataset.json")
    file_ending = source_json["file_ending"]
    n_channels = len(source_json["channel_names"])
    source_name = source_dir.name.split("_", 1)[1] if "_" in source_dir.name else source_dir.name
    target = root / dataset_folder_name(dataset_id, name or f"{source_name}Distill")
    if raw_root is None:  # one name per id across nnUNet_raw, nnUNet_preprocessed and nnUNet_results
        check_dataset_id_free(target.name)
    existing = existing_datasets(root, dataset_id)
    if existing and not overwrite:
        raise NnunetKDError(f"dataset id {dataset_id:03d} already exists: {', '.join(map(str, existing))}; "
                            f"pass --overwrite to replace it or choose another id")
    if source_dir.resolve() in [p.resolve() for p in existing]:
        raise ConfigurationError("the distillation dataset cannot replace its own source dataset")

    pseudo_sets = _pseudo_sets(folders)  # reports first: a bad report is named before the source is listed
    labelled = get_filenames_of_train_images_and_targets(str(source_dir), source_json)
    allowed = label_values(source_json)
    keep_status = {STATUS_OK, STATUS_EMPTY} if include_empty else {STATUS_OK}
    per_fold = len(folders) > 1
    plan = []  # (new id, original case, images, label, sha256, report path)
    sets, left_out, members = [], {}, []
    for pseudo_dir, report, fold in pseudo_sets:
        if report["file_ending"] != file_ending:
            raise ConfigurationError(f"pseudo-labels in {pseudo_dir} are {report['file_ending']} files, {source_dir} "
                                     f"uses {file_ending}")
        images_dir = Path(images) if images is not None else Path(report["images"])
        chosen = sorted(c for c, info in report["cases"].items() if info["status"] in keep_status)
        suffix = f"{FOLD_CASE_SUFFIX}{fold}" if per_fold else ""
        left_out.update({c + suffix: info["status"] for c, info in report["cases"].items()
                         if info["status"] not in keep_status})
        if not chosen:
            raise InputDataError(f"no usable pseudo-labelled case in {pseudo_dir} (statuses: {report['rejected']})")
        clash = sorted({c + suffix for c in chosen} & set(labelled))
        if clash:
            raise InputDataError(f"pseudo-labelled cases {clash} have the same identifier as labelled cases of "
                                 f"{source_dir}; rename them in {images_dir}")
        pseudo_images = list_cases(images_dir, file_ending, n_channels)
        missing = [c for c in chosen if c not in pseudo_images]
        if missing:
            raise InputDataError(f"images of pseudo-labelled cases {missing} are not in {images_dir}")
        for case in chosen:
            plan.append((case + suffix, case, pseudo_images[case], pseudo_dir / "labels" / f"{case}{file_ending}",
                         report["cases"][case]["label_sha256"], pseudo_dir / "pseudolabels.json"))
        sets.append({"fold": fold, "member_folds": sorted({str(f) for f in report["folds"]}),
                     "cases": [c + suffix for c in chosen], "pseudolabels": str(pseudo_dir.resolve()),
                     "images": str(images_dir.resolve())})
        members.extend(report["members"])
    pseudo_ids = sorted(p[0] for p in plan)

    with staged_folder(target, replace=existing) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for case, files in sorted(labelled.items()):
            for channel, image in enumerate(files["images"]):
                _place(Path(image), tmp / "imagesTr" / f"{case}_{channel:04d}{file_ending}", copy)
            _place(Path(files["label"]), tmp / "labelsTr" / f"{case}{file_ending}", True)
        for new_id, case, case_images, label, sha, report_path in plan:
            check_pseudo_label(case, label, case_images[0], allowed, sha, report_path)
            for channel, image in enumerate(case_images):
                _place(image, tmp / "imagesTr" / f"{new_id}_{channel:04d}{file_ending}", copy)
            _place(label, tmp / "labelsTr" / f"{new_id}{file_ending}", True)
        meta = {k: v for k, v in source_json.items() if k != "dataset"}
        meta["numTraining"] = len(labelled) + len(plan)
        meta["name"] = target.name.split("_", 1)[1]
        meta["description"] = f"{source_dir.name} + {len(plan)} pseudo-labelled cases (nnunet-kd seed 001)"
        meta[PSEUDO_LABELLED_KEY] = pseudo_ids
        meta[PSEUDO_LABEL_SETS_KEY] = sets
        meta[PROVENANCE_KEY] = {
            "source_dataset": source_dir.name,
            "labelled_cases": len(labelled),
            "pseudolabels": [s["pseudolabels"] for s in sets],
            "images": sets[0]["images"] if len(sets) == 1 else [s["images"] for s in sets],
            "members": members,
            "left_out": left_out,
            "files": "labels copied, images " + ("copied" if copy else "symlinked"),
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=4) + "\n")
    return target
