"""Write the teacher of a KD run as an ordinary 4-channel nnU-Net model folder.

The KD trainers keep the teacher inside each fold's checkpoint (``checkpoint["nnunet_kd"]``). This module turns it
into a model folder of its own — full dataset.json and plans.json, ``fold_X/checkpoint_final.pth`` whose
``network_weights`` are the teacher's — that ``nnUNetv2_predict`` runs on cases with all four files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from nnunet_kd.errors import ConfigurationError

TEACHER_SUFFIX = "_teacher"


def default_teacher_folder(model_folder: Path) -> Path:
    """``Trainer__Plans__config`` -> ``Trainer_teacher__Plans__config`` beside it."""
    parts = model_folder.name.split("__")
    if len(parts) != 3:
        raise ConfigurationError(f"{model_folder} is not an nnU-Net model folder named TRAINER__PLANS__CONFIGURATION")
    return model_folder.parent / f"{parts[0]}{TEACHER_SUFFIX}__{parts[1]}__{parts[2]}"


def available_folds(model_folder: Path, checkpoint_name: str) -> list[str]:
    return sorted(p.name[len("fold_"):] for p in model_folder.glob("fold_*") if (p / checkpoint_name).is_file())


def export_teacher(model_folder: str | Path, out_folder: str | Path | None = None,
                   folds: Sequence[str] | None = None, checkpoint_name: str = "checkpoint_final.pth",
                   overwrite: bool = False) -> Path:
    """Export the teacher of every requested fold of ``model_folder``; returns the new model folder."""
    import torch

    model_folder = Path(model_folder)
    if not model_folder.is_dir():
        raise ConfigurationError(f"model folder {model_folder} does not exist")
    out = Path(out_folder) if out_folder is not None else default_teacher_folder(model_folder)
    folds = list(folds) if folds else available_folds(model_folder, checkpoint_name)
    if not folds:
        raise ConfigurationError(f"no fold_*/{checkpoint_name} in {model_folder}")
    if out.exists() and not overwrite:
        raise ConfigurationError(f"{out} exists; pass --overwrite to replace it")

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        teacher_files: tuple[dict, dict] | None = None
        for fold in folds:
            ckpt_file = model_folder / f"fold_{fold}" / checkpoint_name
            if not ckpt_file.is_file():
                raise ConfigurationError(f"fold {fold}: checkpoint {ckpt_file} does not exist")
            checkpoint = torch.load(ckpt_file, map_location="cpu", weights_only=False)
            state = checkpoint.get("nnunet_kd")
            if state is None or "kd_modules" not in state:
                raise ConfigurationError(f"{ckpt_file} holds no teacher (not trained by a KD trainer with a teacher)")
            weights = {k[len("teacher."):]: v for k, v in state["kd_modules"].items() if k.startswith("teacher.")}
            init_args = dict(checkpoint["init_args"], dataset_json=state["teacher_dataset_json"])
            exported = {
                "network_weights": weights,
                "init_args": init_args,
                "trainer_name": checkpoint["trainer_name"],
                "inference_allowed_mirroring_axes": checkpoint.get("inference_allowed_mirroring_axes"),
                "current_epoch": checkpoint.get("current_epoch"),
                "nnunet_kd_exported_from": str(ckpt_file),
            }
            (tmp / f"fold_{fold}").mkdir()
            torch.save(exported, tmp / f"fold_{fold}" / "checkpoint_final.pth")
            teacher_files = (state["teacher_dataset_json"], state["teacher_plans"])
        assert teacher_files is not None  # folds is non-empty
        (tmp / "dataset.json").write_text(json.dumps(teacher_files[0], indent=4))
        (tmp / "plans.json").write_text(json.dumps(teacher_files[1], indent=4))
        fingerprint = model_folder / "dataset_fingerprint.json"
        if fingerprint.is_file():
            shutil.copyfile(fingerprint, tmp / "dataset_fingerprint.json")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
