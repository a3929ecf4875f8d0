"""Writing derived nnU-Net model folders (an exported teacher, a modality-subset student).

A model folder is what ``nnUNetv2_predict -tr TRAINER`` reads: ``dataset.json``, ``plans.json`` and
``fold_X/checkpoint_final.pth``. :func:`write_model_folder` builds one next to its target and renames it into
place, so an error leaves nothing half-written and ``--overwrite`` never deletes the old folder before the new one
is complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from nnunet_kd.errors import ConfigurationError


def selected_folds(model_folder: str | os.PathLike, folds: Sequence[str | int] | None,
                   checkpoint_name: str = "checkpoint_final.pth") -> list[str]:
    """The requested folds (all with a checkpoint when None), each checked to have ``fold_X/checkpoint_name``."""
    model_folder = Path(model_folder)
    if folds:
        chosen = [str(f) for f in folds]
    else:
        chosen = sorted(p.name[len("fold_"):] for p in model_folder.glob("fold_*") if (p / checkpoint_name).is_file())
        if not chosen:
            raise ConfigurationError(f"no fold_*/{checkpoint_name} in {model_folder}")
    for fold in chosen:
        if not (model_folder / f"fold_{fold}" / checkpoint_name).is_file():
            raise ConfigurationError(f"fold {fold}: checkpoint {model_folder / f'fold_{fold}' / checkpoint_name} "
                                     f"does not exist")
    return chosen


def write_model_folder(out: str | os.PathLike, source_folder: str | os.PathLike, dataset_json: dict, plans: dict,
                       folds: Sequence[str], make_checkpoint: Callable[[str], dict], overwrite: bool = False) -> Path:
    """Write a model folder: ``make_checkpoint(fold)`` gives each fold's checkpoint dict; returns ``out``.

    The source folder's ``dataset_fingerprint.json`` is copied along when present. An existing ``out`` is refused
    unless ``overwrite``; then it is replaced only once the new folder is complete (built in a temporary sibling,
    :func:`nnunet_kd.safe_io.staged_folder`), so an error, Ctrl-C or SIGTERM keeps the old folder
    and a SIGKILL leaves at most a temporary sibling that the next run removes or restores.
    """
    import torch

    from nnunet_kd.safe_io import staged_folder

    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise ConfigurationError(f"{out} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"{out} exists and is not a folder; remove it or choose another output folder")
    with staged_folder(out, replace=[out] if out.exists() else []) as tmp:
        for fold in folds:
            (tmp / f"fold_{fold}").mkdir()
            torch.save(make_checkpoint(fold), tmp / f"fold_{fold}" / "checkpoint_final.pth")
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=4))
        (tmp / "plans.json").write_text(json.dumps(plans, indent=4))
        fingerprint = Path(source_folder) / "dataset_fingerprint.json"
        if fingerprint.is_file():
            shutil.copyfile(fingerprint, tmp / "dataset_fingerprint.json")
    return out
