"""BraTS releases <-> nnU-Net raw datasets.

* :mod:`~nnunet_kd.dataset_conversion.layouts`: recognise a release layout and list its cases (no writing);
* :mod:`~nnunet_kd.dataset_conversion.convert`: write ``$nnUNet_raw/DatasetXXX_NAME`` (Dataset137 convention);
* :mod:`~nnunet_kd.dataset_conversion.export`: predicted labels back to a release's convention;
* :mod:`~nnunet_kd.dataset_conversion.select`: copy only some modalities of an nnU-Net images folder.

The public functions are re-exported here lazily, so importing this package does not load SimpleITK.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BratsCase": "layouts",
    "LAYOUTS": "layouts",
    "detect_layout": "layouts",
    "list_cases": "layouts",
    "convert_brats": "convert",
    "export_brats": "export",
    "select_modalities": "select",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
