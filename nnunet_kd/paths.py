"""nnU-Net's folder variables, read in one place.

nnU-Net users set ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``; nnunet-kd reads the same
variables (and nothing else) to find datasets and models. ``nnUNet_extTrainer`` is nnU-Net's own variable
for external trainer folders; :func:`trainer_registry_folder` is the folder to put in it. ``NNUNET_KD_DEBUG``
(any value but empty or 0) makes the CLI print full tracebacks instead of one-line errors.

A dataset id must name one dataset in all three folders: nnU-Net stops with "more than one dataset name found"
when ``nnUNet_preprocessed`` or ``nnUNet_results`` hold ``DatasetXXX_A`` and a new raw dataset is ``DatasetXXX_B``;
:func:`check_dataset_id_free` refuses such an id before anything is written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from nnunet_kd.errors import ConfigurationError

RAW = "nnUNet_raw"
PREPROCESSED = "nnUNet_preprocessed"
RESULTS = "nnUNet_results"
EXT_TRAINER = "nnUNet_extTrainer"
DEBUG = "NNUNET_KD_DEBUG"


def _folder(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        raise ConfigurationError(
            f"environment variable {variable} is not set; export it as for nnU-Net, e.g. "
            f"`export {variable}=/data/{variable}`"
        )
    return Path(value)


def nnunet_raw() -> Path:
    """``$nnUNet_raw``; raises :class:`ConfigurationError` when unset."""
    return _folder(RAW)


def nnunet_preprocessed() -> Path:
    """``$nnUNet_preprocessed``; raises :class:`ConfigurationError` when unset."""
    return _folder(PREPROCESSED)


def nnunet_results() -> Path:
    """``$nnUNet_results``; raises :class:`ConfigurationError` when unset."""
    return _folder(RESULTS)


def nnunet_results_if_set() -> Path | None:
    """``$nnUNet_results``, or None when unset (for optional look-ups)."""
    value = os.environ.get(RESULTS)
    return Path(value) if value else None


def debug_enabled() -> bool:
    """True when ``NNUNET_KD_DEBUG`` asks for full tracebacks (any value except empty, 0, false, no)."""
    return os.environ.get(DEBUG, "").strip().lower() not in ("", "0", "false", "no")


def check_dataset_id_free(folder_name: str, roots: Sequence[Path] | None = None) -> None:
    """Refuse ``DatasetXXX_NAME`` when a folder of ``roots`` already uses id XXX under another name.

    ``roots`` default to ``$nnUNet_preprocessed`` and ``$nnUNet_results`` (those set). The same name is fine (an
    overwritten dataset keeps its preprocessed data and models); another name would make nnU-Net find two names
    for one id.
    """
    prefix = folder_name.split("_", 1)[0] + "_"
    if roots is None:
        roots = [Path(v) for v in (os.environ.get(PREPROCESSED), os.environ.get(RESULTS)) if v]
    clashes = [p for root in roots if root.is_dir() for p in sorted(root.iterdir())
               if p.name.startswith(prefix) and p.name != folder_name and p.is_dir()]
    if clashes:
        raise ConfigurationError(
            f"dataset id {prefix[len('Dataset'):-1]} is already used by {', '.join(map(str, clashes))}; "
            f"nnU-Net would find two dataset names for it. Choose another id, or remove those folders first")


def trainer_registry_folder() -> Path:
    """The folder to list in ``nnUNet_extTrainer``: it holds only trainer re-export modules."""
    return Path(__file__).resolve().parent / "trainer_registry"


def ext_trainer_is_registered() -> bool:
    """True when ``nnUNet_extTrainer`` lists this package's trainer folder."""
    folder = trainer_registry_folder()
    entries = [e for e in os.environ.get(EXT_TRAINER, "").split(os.pathsep) if e.strip()]
    return any(Path(e).resolve() == folder for e in entries if Path(e).exists())


def environment_with_trainers(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) whose ``nnUNet_extTrainer`` also lists our trainers.

    Used when nnunet-kd itself starts ``nnUNetv2_*`` commands (demo, pseudo-labelling) so users need not
    export anything for those.
    """
    env = dict(os.environ if base is None else base)
    folder = str(trainer_registry_folder())
    entries = [e for e in env.get(EXT_TRAINER, "").split(os.pathsep) if e.strip()]
    if folder not in entries:
        entries.append(folder)
    env[EXT_TRAINER] = os.pathsep.join(entries)
    return env


@contextlib.contextmanager
def trainers_findable() -> Iterator[None]:
    """Within the block, nnU-Net code running in this process also finds our trainers; restored afterwards."""
    old = os.environ.get(EXT_TRAINER)
    os.environ[EXT_TRAINER] = environment_with_trainers()[EXT_TRAINER]
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(EXT_TRAINER, None)
        else:
            os.environ[EXT_TRAINER] = old
