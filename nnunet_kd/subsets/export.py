"""A model folder for one modality subset of an any-subset model, that stock ``nnUNetv2_predict`` runs.

An any-subset model (``nnUNetTrainerBarlowKD_AnySubset`` and variants) is one 4-channel network trained with missing
channels set to 0 after normalisation. :func:`export_subset` writes, for a kept subset such as T2 + FLAIR, a model
folder whose dataset.json / plans.json describe only the kept channels (:mod:`nnunet_kd.subsets.modalities`: reduced and
re-keyed, kept channels first) and record the network's full channel list. nnU-Net then preprocesses cases with only
the kept files (original ``_000X`` suffixes) and builds the network through the checkpoint's trainer class, whose
``build_network_architecture`` sees the record and returns the 4-channel network behind a forward pre-hook
(:func:`attach_zero_fill`) that inserts zero channels at the missing positions. The state_dict is unchanged, so the
exported checkpoints hold the original student weights (teacher and projector state are left out).

A case with the wrong number of files stops with a :class:`nnunet_kd.subsets.modalities.WrongInputChannelsError` naming the
expected files. (nnU-Net matches files to channels by sorted suffix only, so the right *number* of files with wrong
suffixes cannot be detected; ``nnunet-kd select-modalities`` picks the right files.)

Public: :data:`ANY_SUBSET_KEY`, :class:`ZeroFillRecord`, :func:`zero_fill_record`, :func:`attach_zero_fill`,
:func:`any_subset_record`, :func:`subset_model_files`, :func:`default_subset_folder`, :func:`export_subset`.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_kd.errors import ConfigurationError
from nnunet_kd.model_folder import selected_folds, write_model_folder
from nnunet_kd.safe_io import load_checkpoint, read_json_object
from nnunet_kd.subsets.catalog import parse_subset, subset_name
from nnunet_kd.subsets.modalities import (
    RECORD_KEY,
    ChannelSubset,
    WrongInputChannelsError,
    resolve_channels,
    student_dataset_json,
    student_plans,
)

#: Key (under dataset.json's ``nnunet_kd`` record) marking a model trained with random modality subsets.
ANY_SUBSET_KEY = "any_subset"
#: Key (under the ``nnunet_kd`` record of an exported subset model's plans/dataset.json) of the zero-fill record.
ZERO_FILL_KEY = "zero_filled_input"
#: Checkpoint entries kept in exported checkpoints (what nnU-Net's predictor reads).
_CHECKPOINT_KEYS = ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes",
                    "current_epoch")


@dataclass(frozen=True)
class ZeroFillRecord:
    """The network's channels and which of them an exported subset model receives (indices into them)."""

    model_channel_names: tuple[str, ...]
    kept_indices: tuple[int, ...]

    @property
    def num_model_channels(self) -> int:
        return len(self.model_channel_names)

    @property
    def kept(self) -> ChannelSubset:
        return ChannelSubset(self.kept_indices, tuple(self.model_channel_names[i] for i in self.kept_indices))

    def as_record(self) -> dict:
        return {"model_channel_names": list(self.model_channel_names), "kept_channel_indices": list(self.kept_indices),
                "missing_channels": "zero after normalisation"}


def zero_fill_record(plans_or_dataset_json: Mapping) -> ZeroFillRecord | None:
    """The zero-fill record of an exported subset model's plans/dataset.json, or None for any other model."""
    record = plans_or_dataset_json.get(RECORD_KEY, {}).get(ZERO_FILL_KEY)
    if not record:
        return None
    return ZeroFillRecord(tuple(record["model_channel_names"]), tuple(int(i) for i in record["kept_channel_indices"]))


def attach_zero_fill(network, record: ZeroFillRecord):
    """Let ``network`` (built for all ``record.num_model_channels`` channels) take only the kept channels.

    A forward pre-hook, run before any other pre-hook, that places the k kept input channels at their positions and
    zeros elsewhere. Inputs with a channel count other than k raise :class:`WrongInputChannelsError` naming the
    expected files. The network's ``state_dict`` is unchanged.
    """
    kept = list(record.kept_indices)
    n_model = record.num_model_channels
    description = record.kept.describe()
    keep_names = ",".join(record.kept.names)

    def fill(_module, args):
        if not args or not hasattr(args[0], "shape"):
            return None
        x = args[0]
        if x.ndim < 2 or x.shape[1] != len(kept):
            had = x.shape[1] if x.ndim >= 2 else "no channel axis"
            raise WrongInputChannelsError(
                f"this model expects {len(kept)} input file(s) per case: {description}; the case had {had}. "
                f"Give the input folder only those files per case (e.g. with `nnunet-kd select-modalities IN OUT "
                f"--keep {keep_names}`).")
        full = x.new_zeros((x.shape[0], n_model, *x.shape[2:]))
        full[:, kept] = x
        return (full, *args[1:])

    network.register_forward_pre_hook(fill, prepend=True)
    return network


def any_subset_record(dataset_json: Mapping) -> dict | None:
    """The record a model folder's dataset.json has when it was trained with random modality subsets."""
    return dataset_json.get(RECORD_KEY, {}).get(ANY_SUBSET_KEY)


def _keep_subset(dataset_json: Mapping, keep: str | Sequence[str]) -> ChannelSubset:
    names = parse_subset(keep)
    return resolve_channels(dataset_json["channel_names"], names)


def _warn_if_never_trained(record: Mapping, subset: ChannelSubset, where: str) -> None:
    trained = dict(zip(record.get("subsets", []), record.get("probabilities", [])))
    name = subset_name(parse_subset(subset.names))
    if trained.get(name, 1.0) == 0:
        warnings.warn(f"{where}: subset {name} was never drawn in training (its subset weight was 0); its predictions "
                      f"are untested", UserWarning, stacklevel=3)


def subset_model_files(dataset_json: Mapping, plans: Mapping, keep: str | Sequence[str],
                       where: str = "the model") -> tuple[dict, dict, ZeroFillRecord]:
    """dataset.json and plans.json of the subset model of an any-subset model, and its zero-fill record.

    ``keep`` is a subset as accepted by :func:`nnunet_kd.subsets.catalog.parse_subset` (``"T2,FLAIR"``). Raises
    :class:`ConfigurationError` for an empty or unknown subset, or when ``dataset_json`` is not an any-subset model's.
    """
    if any_subset_record(dataset_json) is None:
        raise ConfigurationError(
            f"{where} was not trained with random modality subsets (its dataset.json has no "
            f"'{RECORD_KEY}.{ANY_SUBSET_KEY}' record); export-subset needs a model trained by "
            f"nnUNetTrainerBarlowKD_AnySubset or a variant, because other models were never shown zeroed channels")
    subset = _keep_subset(dataset_json, keep)
    _warn_if_never_trained(any_subset_record(dataset_json), subset, where)
    names = tuple(dataset_json["channel_names"][str(i)] for i in range(len(dataset_json["channel_names"])))
    record = ZeroFillRecord(names, subset.indices)
    reduced_json = student_dataset_json(dataset_json, subset)
    reduced_json[RECORD_KEY][ZERO_FILL_KEY] = record.as_record()
    reduced_json[RECORD_KEY]["note"] = (f"nnunet-kd subset model ({subset_name(subset.names)}) of an any-subset "
                                        f"model: give each case only the files listed in student.file_suffixes")
    reduced_plans = student_plans(plans, subset)
    reduced_plans[RECORD_KEY][ZERO_FILL_KEY] = record.as_record()
    return reduced_json, reduced_plans, record


def default_subset_folder(model_folder: str | os.PathLike, keep: str | Sequence[str]) -> Path:
    """``TRAINER__PLANS__CONF`` -> ``TRAINER_keep_T2_FLAIR__PLANS__CONF`` beside it."""
    model_folder = Path(model_folder)
    parts = model_folder.name.split("__")
    if len(parts) != 3:
        raise ConfigurationError(f"{model_folder} is not an nnU-Net model folder named TRAINER__PLANS__CONFIGURATION; "
                                 f"give the output folder with -o")
    tag = "_".join(parse_subset(keep))
    return model_folder.parent / f"{parts[0]}_keep_{tag}__{parts[1]}__{parts[2]}"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConfigurationError(f"{path.parent} is not an nnU-Net model folder: {path.name} is missing")
    return read_json_object(path, path.name)


def load_model_folder(model_folder: str | os.PathLike) -> tuple[dict, dict]:
    """``(dataset.json, plans.json)`` of a model folder, with clear errors for a missing folder or file."""
    model_folder = Path(model_folder)
    if not model_folder.is_dir():
        raise ConfigurationError(f"model folder {model_folder} does not exist")
    return _read_json(model_folder / "dataset.json"), _read_json(model_folder / "plans.json")


def export_subset(model_folder: str | os.PathLike, keep: str | Sequence[str], out_folder: str | os.PathLike | None = None,
                  folds: Sequence[str | int] | None = None, checkpoint_name: str = "checkpoint_final.pth",
                  overwrite: bool = False) -> Path:
    """Write the model folder of the ``keep`` subset of the any-subset model in ``model_folder``; returns it.

    Every requested fold (default: all with ``checkpoint_name``) gets ``fold_X/checkpoint_final.pth`` holding the
    student's weights and the trainer name; the folder is built next to the target and renamed into place.
    """
    model_folder = Path(model_folder)
    dataset_json, plans = load_model_folder(model_folder)
    reduced_json, reduced_plans, _record = subset_model_files(dataset_json, plans, keep, where=str(model_folder))
    out = Path(out_folder) if out_folder is not None else default_subset_folder(model_folder, keep)
    if out.resolve() == model_folder.resolve():
        raise ConfigurationError(f"output folder {out} is the model folder itself; choose another with -o")
    folds = selected_folds(model_folder, folds, checkpoint_name)
    if out.exists() and not overwrite:
        raise ConfigurationError(f"{out} exists; pass --overwrite to replace it")

    def subset_checkpoint(fold: str) -> dict:
        ckpt_file = model_folder / f"fold_{fold}" / checkpoint_name
        checkpoint = load_checkpoint(ckpt_file)
        missing = [k for k in ("network_weights", "init_args", "trainer_name") if k not in checkpoint]
        if missing:
            raise ConfigurationError(f"{ckpt_file} is not an nnU-Net checkpoint (no {', '.join(missing)})")
        exported = {k: checkpoint[k] for k in _CHECKPOINT_KEYS if k in checkpoint}
        exported["init_args"] = dict(copy.deepcopy(checkpoint["init_args"]), dataset_json=reduced_json)
        exported["nnunet_kd_exported_from"] = str(ckpt_file)
        return exported

    return write_model_folder(out, model_folder, reduced_json, reduced_plans, folds, subset_checkpoint, overwrite)
