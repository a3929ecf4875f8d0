"""nnU-Net's folder variables, read in one place.

nnU-Net users set ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``; nnunet-kd reads the same
variables (and nothing else) to find datasets and models. ``nnUNet_extTrainer`` is nnU-Net's own variable
for external trainer folders; :func:`trainer_registry_folder` is the folder to put in it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from nnunet_kd.errors import ConfigurationError

RAW = "nnUNet_raw"
PREPROCESSED = "nnUNet_preprocessed"
RESULTS = "nnUNet_results"
EXT_TRAINER = "nnUNet_extTrainer"


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
