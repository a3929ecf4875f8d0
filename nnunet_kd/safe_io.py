"""Reading the files users hand us (JSON, checkpoints) with one-line errors that name the file.

A malformed ``plans.json`` or a truncated ``checkpoint_final.pth`` is bad input, not a bug: every command reads
them through these functions, so the CLI prints one line naming the file (:class:`InputDataError`) instead of a
``JSONDecodeError`` or ``UnpicklingError`` traceback.
"""

from __future__ import annotations

import json
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
