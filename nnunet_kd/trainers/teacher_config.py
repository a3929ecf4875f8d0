"""Which existing nnU-Net model is the teacher of a two-stage KD run, and whether it fits the dataset.

nnU-Net trainers take no extra arguments, so the frozen/warm-teacher KD trainers
(:mod:`nnunet_kd.trainers.frozen_teacher`) read their teacher from a small JSON file that travels with the
preprocessed dataset::

    $nnUNet_preprocessed/DatasetXXX_Name/nnunet_kd_teacher__<plans>__<configuration>.json

written by ``nnunet-kd set-teacher`` (:func:`write_teacher_config`). It names a stock model folder in
``$nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>`` of the *same* dataset, plans and
configuration, and optionally a fixed teacher fold (by default the KD run's own fold, so no validation case of
the KD fold was in the teacher's training data) and checkpoint file.

:func:`resolve_teacher` is what a trainer calls before anything is written: it reads the JSON, finds the fold's
checkpoint and checks (:func:`check_teacher_checkpoint`) that it was trained on the same dataset, plans,
configuration, patch size, network, labels, channel names and the first layer's number of input channels.
Every problem is a :class:`ConfigurationError`
with one line saying what to do.

Public functions: :func:`teacher_config_path`, :func:`write_teacher_config`, :func:`read_teacher_config`,
:func:`teacher_model_folder`, :func:`available_teacher_folds`, :func:`teacher_checkpoint_file`,
:func:`load_teacher_checkpoint`, :func:`check_teacher_checkpoint`, :func:`resolve_teacher`,
:func:`first_layer_input_channels`, :func:`check_weights_fit`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_kd.errors import ConfigurationError
from nnunet_kd.paths import nnunet_preprocessed, nnunet_results

#: File name prefix of the teacher JSON inside a preprocessed dataset folder.
CONFIG_PREFIX = "nnunet_kd_teacher"
CONFIG_FORMAT = 1
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
#: Per-configuration plan entries a teacher must share with the KD run (they change preprocessing or the network).
#: (ConfigurationManager property -> name in messages).
MATCHING_CONFIGURATION_KEYS = {"patch_size": "patch size", "spacing": "spacing",
                               "normalization_schemes": "normalisation", "use_mask_for_norm": "normalisation mask",
                               "network_arch_class_name": "network class", "network_arch_init_kwargs": "network"}


Fold = int | str  # nnU-Net folds are 0..N or "all"


@dataclass(frozen=True)
class TeacherConfig:
    """The contents of a teacher JSON: which model folder, fold and checkpoint hold the teacher."""

    trainer: str
    plans: str
    configuration: str
    #: None: use the KD run's own fold.
    fold: Fold | None = None
    checkpoint: str = DEFAULT_CHECKPOINT

    def to_json(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, "teacher_trainer": self.trainer, "plans": self.plans,
                "configuration": self.configuration, "teacher_fold": self.fold, "checkpoint": self.checkpoint}

    @classmethod
    def from_json(cls, data: Any, source: Path | str) -> TeacherConfig:
        """Parse a teacher JSON's contents; malformed content raises :class:`ConfigurationError` naming ``source``."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"teacher config {source} is not a JSON object; write it with nnunet-kd set-teacher")
        missing = [k for k in ("teacher_trainer", "plans", "configuration") if not isinstance(data.get(k), str)]
        if missing:
            raise ConfigurationError(f"teacher config {source} lacks {', '.join(missing)}; "
                                     f"write it again with nnunet-kd set-teacher")
        fold = data.get("teacher_fold")
        if fold is not None:
            fold = parse_fold(fold, source)
        checkpoint = data.get("checkpoint") or DEFAULT_CHECKPOINT
        return cls(data["teacher_trainer"], data["plans"], data["configuration"], fold, str(checkpoint))

    @property
    def folder_name(self) -> str:
        return f"{self.trainer}__{self.plans}__{self.configuration}"


@dataclass
class TeacherSource:
    """A resolved teacher: the checkpoint file for one KD fold, its fold, and its network weights (CPU tensors)."""

    config: TeacherConfig
    fold: Fold
    checkpoint_file: Path
    trainer_name: str
    network_weights: dict = field(repr=False, default_factory=dict)

    def describe(self) -> str:
        return f"{self.trainer_name} fold {self.fold} ({self.checkpoint_file})"


def parse_fold(value: Any, source: Path | str = "teacher fold") -> Fold:
    """``0``/``"0"`` -> 0, ``"all"`` -> ``"all"``; anything else raises :class:`ConfigurationError`."""
    if value == "all":
        return "all"
    try:
        fold = int(value)
    except (TypeError, ValueError):
        fold = -1
    if fold < 0 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigurationError(f"{source}: teacher fold must be a fold number (0, 1, ...) or 'all', got {value!r}")
    return fold


def dataset_id_of(dataset_name: str) -> str:
    """``Dataset517_SynthBraTS`` -> ``517`` (for messages suggesting commands); the name itself if it has no id."""
    match = re.match(r"Dataset(\d{3})_", dataset_name)
    return str(int(match.group(1))) if match else dataset_name


def teacher_config_path(dataset_name: str, plans: str, configuration: str,
                        preprocessed: str | Path | None = None) -> Path:
    """Where the teacher JSON of ``dataset_name`` / ``plans`` / ``configuration`` lives (default root: $nnUNet_preprocessed)."""
    root = Path(preprocessed) if preprocessed is not None else nnunet_preprocessed()
    return root / dataset_name / f"{CONFIG_PREFIX}__{plans}__{configuration}.json"


def write_teacher_config(dataset_name: str, config: TeacherConfig, preprocessed: str | Path | None = None) -> Path:
    """Write ``config`` as the teacher JSON of ``dataset_name`` (atomically; no checks); returns its path.

    The preprocessed dataset folder must exist (run ``nnUNetv2_plan_and_preprocess`` first).
    """
    path = teacher_config_path(dataset_name, config.plans, config.configuration, preprocessed)
    if not path.parent.is_dir():
        raise ConfigurationError(f"preprocessed dataset folder {path.parent} does not exist; run "
                                 f"nnUNetv2_plan_and_preprocess -d {dataset_id_of(dataset_name)} first")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(config.to_json(), indent=4) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_teacher_config(dataset_name: str, plans: str, configuration: str,
                        preprocessed: str | Path | None = None) -> TeacherConfig:
    """The teacher set for ``dataset_name`` / ``plans`` / ``configuration``; a clear error when none is set."""
    path = teacher_config_path(dataset_name, plans, configuration, preprocessed)
    if not path.is_file():
        raise ConfigurationError(
            f"no teacher set for {dataset_name} (plans {plans}, configuration {configuration}): {path} does not "
            f"exist; name the trained 4-channel model first, e.g. `nnunet-kd set-teacher -d {dataset_id_of(dataset_name)} "
            f"-c {configuration} --teacher-trainer nnUNetTrainer --teacher-plans {plans}`")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"teacher config {path} is not readable JSON ({e}); write it again with "
                                 f"nnunet-kd set-teacher") from None
    config = TeacherConfig.from_json(data, path)
    if (config.plans, config.configuration) != (plans, configuration):
        raise ConfigurationError(f"teacher config {path} names plans {config.plans} / configuration "
                                 f"{config.configuration}, not {plans} / {configuration}; write it again with "
                                 f"nnunet-kd set-teacher")
    return config


def teacher_model_folder(dataset_name: str, config: TeacherConfig, results: str | Path | None = None) -> Path:
    """``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>``."""
    root = Path(results) if results is not None else nnunet_results()
    return root / dataset_name / config.folder_name


def available_teacher_folds(model_folder: Path, checkpoint: str = DEFAULT_CHECKPOINT) -> list[Fold]:
    """Folds of ``model_folder`` that have ``checkpoint``, numbers first, in order."""
    folds: list[Fold] = []
    for p in model_folder.glob("fold_*"):
        if (p / checkpoint).is_file():
            name = p.name[len("fold_"):]
            folds.append(int(name) if name.isdigit() else name)
    return sorted(f for f in folds if isinstance(f, int)) + sorted(f for f in folds if isinstance(f, str))


def teacher_checkpoint_file(dataset_name: str, config: TeacherConfig, fold: Fold,
                            results: str | Path | None = None) -> Path:
    """The teacher's checkpoint for ``fold``; a clear error when the model folder or that fold's checkpoint is missing."""
    folder = teacher_model_folder(dataset_name, config, results)
    d = dataset_id_of(dataset_name)
    if not folder.is_dir():
        raise ConfigurationError(
            f"teacher model folder {folder} does not exist; train the teacher first (nnUNetv2_train {d} "
            f"{config.configuration} FOLD -tr {config.trainer} -p {config.plans}) or name another one with "
            f"nnunet-kd set-teacher")
    path = folder / f"fold_{fold}" / config.checkpoint
    if not path.is_file():
        available = available_teacher_folds(folder, config.checkpoint)
        have = f"folds with {config.checkpoint}: {', '.join(map(str, available))}" if available else \
            f"no fold has {config.checkpoint}"
        raise ConfigurationError(
            f"teacher checkpoint {path} does not exist ({have}); train that fold of the teacher "
            f"(nnUNetv2_train {d} {config.configuration} {fold} -tr {config.trainer} -p {config.plans}) or choose a "
            f"trained one with nnunet-kd set-teacher --teacher-fold")
    return path


def load_teacher_checkpoint(path: str | Path) -> dict:
    """Read an nnU-Net checkpoint on the CPU; unreadable files raise :class:`ConfigurationError`."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise ConfigurationError(f"teacher checkpoint {path} is not a readable PyTorch checkpoint "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(checkpoint, dict):
        raise ConfigurationError(f"teacher checkpoint {path} is not an nnU-Net checkpoint")
    return checkpoint


def _configuration(plans: Mapping, configuration: str, source: str | Path) -> Any:
    """nnU-Net's ConfigurationManager of ``configuration`` in ``plans`` (inheritance resolved)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        return PlansManager(dict(plans)).get_configuration(configuration)
    except (KeyError, RuntimeError, ValueError) as e:
        raise ConfigurationError(f"{source}: configuration {configuration} of plans {plans.get('plans_name')} is "
                                 f"unusable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _normalised(value: Any) -> Any:
    """JSON round trip: tuples become lists, keys strings, so plans from files and from checkpoints compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def check_teacher_checkpoint(checkpoint: Mapping, plans: Mapping, configuration: str, dataset_json: Mapping,
                             source: str | Path) -> None:
    """Raise :class:`ConfigurationError` unless the stock checkpoint ``checkpoint`` fits the KD run.

    ``plans`` / ``configuration`` / ``dataset_json`` are the KD run's (the full, 4-channel dataset.json).
    Checked, in this order, from the checkpoint's ``init_args``: that it is an nnU-Net checkpoint and not a KD
    run's (whose ``network_weights`` are the student's), dataset name, plans name, configuration, channel names,
    the first layer's input channels (a student-only model records the full dataset.json but takes fewer),
    labels / regions, and the per-configuration entries :data:`MATCHING_CONFIGURATION_KEYS` (patch size, spacing,
    normalisation, network).
    """
    from nnunet_kd.trainers.barlow_kd import CHECKPOINT_KEY

    init_args = checkpoint.get("init_args")
    if "network_weights" not in checkpoint or not isinstance(init_args, Mapping) or \
            not {"plans", "configuration", "dataset_json"} <= set(init_args):
        raise ConfigurationError(f"teacher checkpoint {source} is not an nnU-Net training checkpoint "
                                 f"(no network_weights / init_args)")
    kd_state = checkpoint.get(CHECKPOINT_KEY)
    if isinstance(kd_state, Mapping) and "student" in kd_state:
        raise ConfigurationError(f"teacher checkpoint {source} is a nnunet-kd KD run whose network is the student; "
                                 f"export its teacher with `nnunet-kd export-teacher` and name that model folder")
    t_plans, t_dataset_json = init_args["plans"], init_args["dataset_json"]
    ours = f"{plans.get('dataset_name')} / {plans.get('plans_name')} / {configuration}"
    prefix = f"teacher {source} does not fit {ours}:"
    if t_plans.get("dataset_name") != plans.get("dataset_name"):
        raise ConfigurationError(f"{prefix} it was trained on dataset {t_plans.get('dataset_name')}; "
                                 f"a teacher must be trained on the same dataset")
    if t_plans.get("plans_name") != plans.get("plans_name"):
        raise ConfigurationError(f"{prefix} it was trained with plans {t_plans.get('plans_name')}; "
                                 f"train the teacher with -p {plans.get('plans_name')} or train KD with "
                                 f"-p {t_plans.get('plans_name')}")
    if init_args["configuration"] != configuration:
        raise ConfigurationError(f"{prefix} it was trained with configuration {init_args['configuration']}")
    t_channels = _normalised(t_dataset_json.get("channel_names"))
    channels = _normalised(dataset_json.get("channel_names"))
    if t_channels != channels:
        raise ConfigurationError(f"{prefix} its channels are {t_channels}, the dataset's are {channels}; "
                                 f"the teacher must take the same channels in the same order")
    n_inputs = first_layer_input_channels(checkpoint["network_weights"])
    if n_inputs is not None and n_inputs != len(channels):
        raise ConfigurationError(f"{prefix} its network takes {n_inputs} input channel(s), the dataset has "
                                 f"{len(channels)}; the teacher must be a model of all channels (is it a student?)")
    for key in ("labels", "regions_class_order"):
        if _normalised(t_dataset_json.get(key)) != _normalised(dataset_json.get(key)):
            raise ConfigurationError(f"{prefix} its dataset.json {key} {_normalised(t_dataset_json.get(key))} "
                                     f"differ from the dataset's {_normalised(dataset_json.get(key))}")
    t_config, config = _configuration(t_plans, configuration, source), _configuration(plans, configuration, "plans")
    for key, what in MATCHING_CONFIGURATION_KEYS.items():
        theirs, mine = _normalised(getattr(t_config, key)), _normalised(getattr(config, key))
        if theirs != mine:
            detail = f" {theirs}, the plans now have {mine}" if key in ("patch_size", "spacing") else \
                ", the plans now differ"
            raise ConfigurationError(f"{prefix} it was trained with another {what}{detail}; re-train the teacher "
                                     f"with the current plans")


def first_layer_input_channels(weights: Mapping) -> int | None:
    """Input channels of a network's first convolution: dim 1 of the first weight with >= 3 dims (None if none)."""
    for value in weights.values():
        shape = getattr(value, "shape", ())
        if len(shape) >= 3:
            return int(shape[1])
    return None


def check_weights_fit(weights: Mapping, reference: Mapping, source: str | Path) -> None:
    """Raise :class:`ConfigurationError` unless ``weights`` has exactly ``reference``'s keys and tensor shapes.

    ``reference`` is the state_dict of the network the teacher is loaded into; one line names the first difference.
    """
    missing = [k for k in reference if k not in weights]
    unexpected = [k for k in weights if k not in reference]
    if missing or unexpected:
        example = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ConfigurationError(f"teacher weights in {source} do not fit the network of the plans "
                                 f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {example}); "
                                 f"was it trained by a trainer with another network architecture?")
    for key, value in reference.items():
        theirs = tuple(getattr(weights[key], "shape", ()))
        if theirs != tuple(value.shape):
            raise ConfigurationError(f"teacher weights in {source} do not fit the network of the plans: {key} has "
                                     f"shape {list(theirs)}, the network {list(value.shape)}")


def resolve_teacher(plans: Mapping, configuration: str, fold: Fold, dataset_json: Mapping,
                    preprocessed: str | Path | None = None, results: str | Path | None = None) -> TeacherSource:
    """Read the teacher JSON of a KD run, load the teacher checkpoint of its fold and check that it fits.

    ``plans`` / ``configuration`` / ``fold`` / ``dataset_json`` are the KD trainer's constructor arguments. The teacher
    fold is the JSON's ``teacher_fold`` or else ``fold``. Returns the checkpoint's network weights with it.
    """
    dataset_name, plans_name = plans["dataset_name"], plans["plans_name"]
    config = read_teacher_config(dataset_name, plans_name, configuration, preprocessed)
    teacher_fold = config.fold if config.fold is not None else fold
    path = teacher_checkpoint_file(dataset_name, config, teacher_fold, results)
    checkpoint = load_teacher_checkpoint(path)
    check_teacher_checkpoint(checkpoint, plans, configuration, dataset_json, path)
    return TeacherSource(config, teacher_fold, path, str(checkpoint.get("trainer_name", config.trainer)),
                         checkpoint["network_weights"])
