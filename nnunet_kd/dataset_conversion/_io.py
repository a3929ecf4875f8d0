"""Shared mechanics of the conversion commands: worker pools, output-folder refusal, compressed writing.

Output folders are built with :func:`nnunet_kd.safe_io.staged_folder`, which every writing command shares; NIfTI
reading and checking is in :mod:`nnunet_kd.nifti`, which evaluation and distillation share too.

Private to :mod:`nnunet_kd.dataset_conversion`; the public functions live in ``convert``, ``export`` and
``select``.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import SimpleITK as sitk

from nnunet_kd.errors import NnunetKDError

R = TypeVar("R")


def write_image(image: sitk.Image, path: Path) -> None:
    """Write ``image`` compressed (``.nii.gz``)."""
    sitk.WriteImage(image, str(path), True)


def require_new_folder(out: Path, what: str) -> None:
    """Refuse an output folder that exists and is not empty (or is a file)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NnunetKDError(f"{what} {out} already exists and is not empty; choose another folder or remove it")


# ----------------------------------------------------------------------------------------------- workers
def _call(job: tuple[Callable[..., R], tuple[Any, ...]]) -> R:
    fn, args = job
    return fn(*args)


def run_jobs(fn: Callable[..., R], jobs: Sequence[tuple[Any, ...]], num_processes: int, progress: bool,
             desc: str) -> list[R]:
    """``[fn(*args) for args in jobs]`` in a spawn pool of ``num_processes`` workers with a tqdm bar.

    ``fn`` must be a module-level function that raises :class:`NnunetKDError` (one line) for bad input; the
    first such error stops the pool and is re-raised here. Results come back in job order.
    """
    from tqdm import tqdm

    if num_processes < 1:
        raise NnunetKDError(f"--num-processes must be at least 1, got {num_processes}")
    results: list[R] = []
    with tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress) as bar:
        if num_processes == 1 or len(jobs) <= 1:
            for args in jobs:
                results.append(fn(*args))
                bar.update()
            return results
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(num_processes, len(jobs))) as pool:
            for result in pool.imap(_call, [(fn, args) for args in jobs]):
                results.append(result)
                bar.update()
    return results
