"""Write the teacher of a KD run as an ordinary 4-channel nnU-Net model folder.

The KD trainers keep the teacher inside each fold's checkpoint (``checkpoint["nnunet_kd"]``). This module turns it
into a model folder of its own — full dataset.json and plans.json, ``fold_X/checkpoint_final.pth`` whose
``network_weights`` are the teacher's — that ``nnUNetv2_predict`` runs on cases with all four files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nnunet_kd.errors import ConfigurationError
from nnunet_kd.model_folder import selected_folds, write_model_folder
from nnunet_kd.safe_io import load_checkpoint

TEACHER_SUFFIX = "_teacher"


def default_teacher_folder(model_folder: Path) -> Path:
    """``Trainer__Plans__config`` -> ``Trainer_teacher__Plans__config`` beside it."""
    parts = model_folder.name.split("__")
    if len(parts) != 3:
        raise ConfigurationError(f"{model_folder} is not an nnU-Net model folder named TRAINER__PLANS__CONFIGURATION")
    return model_folder.parent / f"{parts[0]}{TEACHER_SUFFIX}__{parts[1]}__{parts[2]}"


def _teacher_state(checkpoint_file: Path) -> tuple[dict, dict]:
    """``(checkpoint, checkpoint["nnunet_kd"])`` of a KD checkpoint that holds a teacher."""
    checkpoint = load_checkpoint(checkpoint_file)
    state = checkpoint.get("nnunet_kd")
    if state is None or "kd_modules" not in state:
        raise ConfigurationError(f"{checkpoint_file} holds no teacher (not trained by a KD trainer with a teacher)")
    return checkpoint, state


def export_teacher(model_folder: str | Path, out_folder: str | Path | None = None,
                   folds: Sequence[str] | None = None, checkpoint_name: str = "checkpoint_final.pth",
                   overwrite: bool = False) -> Path:
    """Export the teacher of every requested fold of ``model_folder``; returns the new model folder."""
    model_folder = Path(model_folder)
    if not model_folder.is_dir():
        raise ConfigurationError(f"model folder {model_folder} does not exist")
    out = Path(out_folder) if out_folder is not None else default_teacher_folder(model_folder)
    fold_list = selected_folds(model_folder, folds, checkpoint_name)
    if out.exists() and not overwrite:
        raise ConfigurationError(f"{out} exists; pass --overwrite to replace it")
    loaded = {fold_list[0]: _teacher_state(model_folder / f"fold_{fold_list[0]}" / checkpoint_name)}
    first = loaded[fold_list[0]][1]

    def teacher_checkpoint(fold: str) -> dict:
        ckpt_file = model_folder / f"fold_{fold}" / checkpoint_name
        checkpoint, state = loaded.pop(fold, None) or _teacher_state(ckpt_file)
        weights = {k[len("teacher."):]: v for k, v in state["kd_modules"].items() if k.startswith("teacher.")}
        return {
            "network_weights": weights,
            "init_args": dict(checkpoint["init_args"], dataset_json=state["teacher_dataset_json"]),
            "trainer_name": checkpoint["trainer_name"],
            "inference_allowed_mirroring_axes": checkpoint.get("inference_allowed_mirroring_axes"),
            "current_epoch": checkpoint.get("current_epoch"),
            "nnunet_kd_exported_from": str(ckpt_file),
        }

    return write_model_folder(out, model_folder, first["teacher_dataset_json"], first["teacher_plans"], fold_list,
                              teacher_checkpoint, overwrite)
