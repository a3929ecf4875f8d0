"""Writing derived nnU-Net model folders (an exported teacher, a modality-subset student).

A model folder is what ``nnUNetv2_predict -tr TRAINER`` reads: ``dataset.json``, ``plans.json`` and
``fold_X/checkpoint_final.pth``. :func:`write_model_folder` builds one next to its target and renames it into
place, so an error leaves nothing half-written.
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
    unless ``overwrite``.
    """
    import torch

    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigurationError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for fold in folds:
            (tmp / f"fold_{fold}").mkdir()
            torch.save(make_checkpoint(fold), tmp / f"fold_{fold}" / "checkpoint_final.pth")
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=4))
        (tmp / "plans.json").write_text(json.dumps(plans, indent=4))
        fingerprint = Path(source_folder) / "dataset_fingerprint.json"
        if fingerprint.is_file():
            shutil.copyfile(fingerprint, tmp / "dataset_fingerprint.json")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
