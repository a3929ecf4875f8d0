"""Safe file I/O for every command: reading users' files with one-line errors, writing output folders atomically.

Reading: a malformed ``plans.json`` or a truncated ``checkpoint_final.pth`` is bad input, not a bug: every command
reads them through these functions, so the CLI prints one line naming the file (:class:`InputDataError`) instead of
a ``JSONDecodeError`` or ``UnpicklingError`` traceback.

Writing: :func:`staged_folder` builds an output folder next to its target and renames it into place only when
complete, so an error, Ctrl-C, SIGTERM or a kill never leaves a half-written output (leftovers of killed runs are
removed by the next run on the same target). It is the one such helper: datasets, model folders, evaluation and
report folders, subset predictions all use it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from nnunet_kd.errors import InputDataError


def read_json(path: Path | str, what: str = "JSON file") -> Any:
    """Parse ``path``; a missing, unreadable or malformed file raises :class:`InputDataError` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputDataError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputDataError(f"cannot read {what} {path}: {e.__class__.__name__}: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputDataError(f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def read_json_object(path: Path | str, what: str = "JSON file") -> dict:
    """:func:`read_json` for files that must hold a JSON object (dataset.json, plans.json, reports)."""
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise InputDataError(f"{what} {path} holds a JSON {type(value).__name__}, not an object")
    return value


def load_checkpoint(path: Path | str, map_location: Any = "cpu") -> dict:
    """``torch.load`` of an nnU-Net checkpoint; a missing, truncated or foreign file raises :class:`InputDataError`."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # zipfile, pickle, EOF and OS errors of a damaged file alike
        raise InputDataError(f"cannot load checkpoint {path} (damaged or not a PyTorch checkpoint): "
                             f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")) \
            from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise InputDataError(f"checkpoint {path} is not an nnU-Net checkpoint (no 'network_weights')")
    return checkpoint


# ------------------------------------------------------------------------------------------ staged folders
#: ``.NAME.nnunet-kd-tmp-PID`` (being built), ``.NAME.nnunet-kd-old-PID`` (an output set aside while being
#: replaced), ``.NAME.nnunet-kd-del-PID`` (an old output being deleted): the temporary siblings of
#: :func:`staged_folder`. The ``nnunet-kd`` in the name keeps clean-up away from other programs' files.
_TEMP_SIBLING = re.compile(r"^\.(?P<name>.+)\.nnunet-kd-(?P<tag>tmp|old|del)-(?P<pid>\d+)$")
#: ``.DatasetXXX_NAME.tmp-PID``: a raw dataset left by a killed run of an earlier nnunet-kd version (convert-brats,
#: make-distill-dataset); both build through :func:`staged_folder` now.
_DATASET_TEMP = re.compile(r"^\.(?P<name>Dataset\d{3}_.+)\.(?P<tag>tmp)-(?P<pid>\d+)$")


def temp_sibling(target: Path, tag: str) -> Path:
    """A hidden name next to ``target`` for building it (``.NAME.nnunet-kd-tmp-<pid>``); tag: tmp, old or del."""
    return target.parent / f".{target.name}.nnunet-kd-{tag}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (ours counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError):
        return False
    return True


def remove_path(path: Path) -> None:
    """Delete a folder tree, file or link; best effort (what cannot be removed stays for the next run)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def remove_stale_siblings(folder: Path, report: Callable[[str], None] | None = None) -> list[Path]:
    """Clean up the temporary siblings that killed runs (SIGKILL, power loss) left in ``folder``.

    Only names of :func:`temp_sibling`'s form (and ``.DatasetXXX_NAME.tmp-PID``) whose process is gone are touched,
    so a concurrent live run keeps its folder. ``tmp`` and ``del`` siblings are removed; an ``old`` one (an output
    set aside by a run that died before its new output was in place) is moved back to ``NAME`` when that does not
    exist, else removed.
    Each action is reported as one line (default: stderr). Returns the paths handled.
    """
    say = report or (lambda line: print(line, file=sys.stderr))
    handled: list[Path] = []
    try:
        entries = list(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return handled
    for path in sorted(entries):
        m = _TEMP_SIBLING.match(path.name) or _DATASET_TEMP.match(path.name)
        if not m or pid_alive(int(m["pid"])):
            continue
        handled.append(path)
        original = folder / m["name"]
        if m["tag"] == "old" and not original.exists() and not original.is_symlink():
            os.replace(path, original)
            say(f"nnunet-kd: restored {original} from {path.name}, set aside by an interrupted run (pid {m['pid']})")
            continue
        remove_path(path)
        say(f"nnunet-kd: removed {path}, left by an interrupted run (pid {m['pid']})")
    return handled


@contextlib.contextmanager
def staged_folder(target: Path, replace: Iterable[Path] = ()) -> Iterator[Path]:
    """Build ``target`` in a temporary sibling folder and move it into place only if the block succeeds.

    Folders in ``replace`` (existing outputs being overwritten) are removed only after the new folder is
    complete. On any error, including KeyboardInterrupt and SIGTERM (see :mod:`nnunet_kd.cli`), the temporary
    folder is deleted and nothing else changes. Leftovers of killed runs next to ``target`` are cleaned up first
    (:func:`remove_stale_siblings`).
    """
    tmp = temp_sibling(target, "tmp")
    try:
        blocking = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise NotADirectoryError(errno.ENOTDIR, f"{blocking} is a file, not a folder", str(target))
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_siblings(target.parent)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as e:
        raise InputDataError(f"cannot create {target}: {e.strerror or e}") from None
    try:
        yield tmp
        moved: list[tuple[Path, Path]] = []
        try:
            for old in replace:
                aside = temp_sibling(old, "old")
                os.replace(old, aside)
                moved.append((old, aside))
            os.replace(tmp, target)
        except BaseException:
            for old, aside in reversed(moved):
                os.replace(aside, old)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old, aside in moved:  # the new output is in place: the old ones go (renamed first, so never restored)
        doomed = temp_sibling(old, "del")
        os.replace(aside, doomed)
        remove_path(doomed)
