"""A distillation dataset: the labelled cases of a raw dataset plus pseudo-labelled cases (seed 001).

:func:`build_distill_dataset` writes ``$nnUNet_raw/DatasetYYY_NAME`` with

* ``imagesTr``/``labelsTr``: every labelled case of the source dataset and every ``ok`` pseudo-labelled case of a
  ``nnunet-kd pseudolabel`` output folder (symlinks to the original files, or copies with ``copy=True``);
* ``dataset.json``: the source's, with ``numTraining`` updated, the list of pseudo-labelled case ids under
  :data:`PSEUDO_LABELLED_KEY` (nnU-Net copies dataset.json into the preprocessed and results folders, so
  ``nnUNetTrainerDistill`` reads the list from there) and provenance under :data:`PROVENANCE_KEY` (source dataset,
  pseudo-label folder, ensemble members, cases left out and why).

Labelled cases keep their identifiers, so nnU-Net's default 5-fold split of the real cases is the same as the
teacher models' split. The dataset is built in a hidden folder next to the target and renamed into place.

Public functions: :func:`build_distill_dataset`, :func:`pseudo_labelled_cases`, :func:`resolve_raw_dataset`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from nnunet_kd.dataset_conversion.convert import dataset_folder_name, existing_datasets
from nnunet_kd.distillation.pseudolabel import STATUS_EMPTY, STATUS_OK, list_cases, load_report
from nnunet_kd.errors import ConfigurationError, InputDataError, NnunetKDError
from nnunet_kd.safe_io import read_json_object

#: dataset.json key listing the pseudo-labelled case identifiers.
PSEUDO_LABELLED_KEY = "nnunet_kd_pseudo_labelled"
#: dataset.json key with where the distillation dataset came from.
PROVENANCE_KEY = "nnunet_kd_distillation"


def pseudo_labelled_cases(dataset_json: Mapping) -> list[str]:
    """Pseudo-labelled case ids recorded in a distillation dataset's dataset.json (empty list if none)."""
    return sorted(str(c) for c in dataset_json.get(PSEUDO_LABELLED_KEY, []))


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


def build_distill_dataset(source: str | int | Path, pseudolabels: str | Path, dataset_id: int,
                          name: str | None = None, images: str | Path | None = None, copy: bool = False,
                          include_empty: bool = False, overwrite: bool = False,
                          raw_root: str | Path | None = None) -> Path:
    """Write the distillation dataset ``DatasetYYY_NAME`` and return its folder.

    ``source``: the labelled raw dataset (id, name or folder); ``pseudolabels``: a ``nnunet-kd pseudolabel``
    output folder (its merged ``pseudolabels.json``); ``images``: the unlabelled images (default: the folder
    recorded by pseudolabel). Cases whose pseudo-label is ``empty`` are left out unless ``include_empty``;
    ``unusable`` cases are always left out. ``name`` defaults to the source name + ``Distill``.
    """
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    from nnunet_kd.paths import check_dataset_id_free, nnunet_raw

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

    pseudo_dir = Path(pseudolabels)
    report = load_report(pseudo_dir)
    if report["file_ending"] != file_ending:
        raise ConfigurationError(f"pseudo-labels are {report['file_ending']} files, {source_dir} uses {file_ending}")
    images_dir = Path(images) if images is not None else Path(report["images"])
    keep_status = {STATUS_OK, STATUS_EMPTY} if include_empty else {STATUS_OK}
    chosen = sorted(c for c, info in report["cases"].items() if info["status"] in keep_status)
    left_out = {c: info["status"] for c, info in report["cases"].items() if info["status"] not in keep_status}
    if not chosen:
        raise InputDataError(f"no usable pseudo-labelled case in {pseudo_dir} (statuses: {left_out})")

    labelled = get_filenames_of_train_images_and_targets(str(source_dir), source_json)
    clash = sorted(set(chosen) & set(labelled))
    if clash:
        raise InputDataError(f"pseudo-labelled cases {clash} have the same identifier as labelled cases of "
                             f"{source_dir}; rename them in {images_dir}")
    pseudo_images = list_cases(images_dir, file_ending, n_channels)
    missing = [c for c in chosen if c not in pseudo_images]
    if missing:
        raise InputDataError(f"images of pseudo-labelled cases {missing} are not in {images_dir}")

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        for case, files in sorted(labelled.items()):
            for channel, image in enumerate(files["images"]):
                _place(Path(image), tmp / "imagesTr" / f"{case}_{channel:04d}{file_ending}", copy)
            _place(Path(files["label"]), tmp / "labelsTr" / f"{case}{file_ending}", copy)
        for case in chosen:
            for channel, image in enumerate(pseudo_images[case]):
                _place(image, tmp / "imagesTr" / f"{case}_{channel:04d}{file_ending}", copy)
            _place(pseudo_dir / "labels" / f"{case}{file_ending}", tmp / "labelsTr" / f"{case}{file_ending}", copy)
        meta = {k: v for k, v in source_json.items() if k != "dataset"}
        meta["numTraining"] = len(labelled) + len(chosen)
        meta["name"] = target.name.split("_", 1)[1]
        meta["description"] = f"{source_dir.name} + {len(chosen)} pseudo-labelled cases (nnunet-kd seed 001)"
        meta[PSEUDO_LABELLED_KEY] = chosen
        meta[PROVENANCE_KEY] = {
            "source_dataset": source_dir.name,
            "labelled_cases": len(labelled),
            "pseudolabels": str(pseudo_dir.resolve()),
            "images": str(images_dir.resolve()),
            "members": report["members"],
            "left_out": left_out,
            "files": "copies" if copy else "symlinks",
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=4) + "\n")
        for old in existing:
            shutil.rmtree(old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
