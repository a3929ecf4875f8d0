"""Predicting the groups of a routed folder (:mod:`nnunet_kd.subsets.routing`) with nnU-Net's own predictor.

Each group is predicted by ``nnUNetPredictor.initialize_from_trained_model_folder`` on its model folder -- the call
``nnUNetv2_predict`` makes, with the same tile step, test-time mirroring, folds, checkpoint and ``-npp`` / ``-nps``
worker processes -- so a group's output equals ``nnUNetv2_predict`` run by hand on a folder holding only that group's
files. The one difference is what each case is given: exactly the files its model's dataset.json asks for
(:func:`nnunet_kd.subsets.input_files.model_expected_inputs`), never a file the model was not trained on.

Outputs of one group are written into a hidden temporary folder inside OUT and each case is then renamed into OUT
(``os.replace``), so OUT only ever holds complete segmentations; an interrupted group leaves no partial file and is
predicted again by ``--continue``. Any-subset models are exported for a subset once into ``OUT/subset_models/`` and
reused while their source checkpoints are unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from nnunet_kd.errors import ConfigurationError, InputDataError
from nnunet_kd.subsets.input_files import model_expected_inputs
from nnunet_kd.subsets.routing import Route

#: Folder of OUT holding the subset models exported from any-subset models.
EXPORT_DIR = "subset_models"
#: File in an exported folder recording the source checkpoints it was made from.
EXPORT_MARKER = "nnunet_kd_export_source.json"
PREDICT_LOG = "predict.log"


def _source_record(route: Route, checkpoint: str) -> dict:
    model = route.model
    assert model is not None
    files = {}
    for fold in model.folds:
        path = model.folder / f"fold_{fold}" / checkpoint
        stat = path.stat()
        files[fold] = [stat.st_size, stat.st_mtime_ns]
    return {"source": str(model.folder.resolve()), "checkpoint": checkpoint, "folds": list(model.folds),
            "files": files, "channels": list(route.fed)}


def ensure_exported(route: Route, checkpoint: str) -> bool:
    """Export the any-subset model of ``route`` to ``route.predict_folder`` unless an up-to-date copy is there.

    Returns True when it exported. The exported folder always holds ``checkpoint_final.pth`` files.
    """
    from nnunet_kd.evaluation.evaluate import atomic_write_text
    from nnunet_kd.subsets.export import export_subset, load_model_folder
    from nnunet_kd.subsets.routing import channel_table

    model, folder = route.model, route.predict_folder
    if model is None or folder is None or folder == model.folder:
        return False
    record = _source_record(route, checkpoint)
    marker = folder / EXPORT_MARKER
    try:
        if marker.is_file() and json.loads(marker.read_text()) == record:
            return False
    except ValueError:
        pass
    table = channel_table(load_model_folder(model.folder)[0])
    keep = ",".join(table[i] for i in route.fed)
    export_subset(model.folder, keep, folder, list(model.folds), checkpoint, overwrite=True)
    atomic_write_text(marker, json.dumps(record, indent=2))
    return True


def predict_checkpoint(route: Route, checkpoint: str) -> str:
    """The checkpoint file name to read in ``route.predict_folder`` (exports always write checkpoint_final.pth)."""
    assert route.model is not None
    return checkpoint if route.predict_folder == route.model.folder else "checkpoint_final.pth"


def case_inputs(route: Route, input_dir: Path, cases: Sequence[str]) -> list[list[str]]:
    """Per case, the files of ``input_dir`` its model takes, in the model's channel order (all must exist)."""
    assert route.predict_folder is not None
    expected = model_expected_inputs(route.predict_folder)
    fed = tuple(f"_{i:04d}" for i in route.fed)
    if tuple(expected.suffixes) != fed:  # the router and the model folder must agree: never guess
        raise ConfigurationError(f"{route.predict_folder} takes {expected.describe()}, not the files "
                                 f"{', '.join(fed)} it was routed")
    lists = []
    for case in cases:
        files = [input_dir / f"{case}{s}{expected.file_ending}" for s in expected.suffixes]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise InputDataError(f"case {case}: {missing[0]} disappeared during prediction")
        lists.append([str(f) for f in files])
    return lists


def set_torch_threads(device) -> None:
    """The thread settings of ``nnUNetv2_predict``: all cores on the CPU, one thread when a GPU predicts."""
    import multiprocessing

    import torch

    if device.type == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    elif device.type == "cuda":
        torch.set_num_threads(1)
        with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
            torch.set_num_interop_threads(1)


def _predictor_class():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class CountingPredictor(nnUNetPredictor):
        """nnU-Net's predictor, calling ``on_case`` after each case's logits (for one progress bar over groups)."""

        on_case: Callable[[], None] | None = None

        def predict_logits_from_preprocessed_data(self, data):
            logits = super().predict_logits_from_preprocessed_data(data)
            if self.on_case is not None:
                self.on_case()
            return logits

    return CountingPredictor


def predict_route(route: Route, cases: Sequence[str], input_dir: Path, out_dir: Path, device, use_mirroring: bool,
                  step_size: float, checkpoint: str, num_processes_preprocessing: int,
                  num_processes_export: int, on_case: Callable[[], None] | None = None,
                  log=None) -> list[str]:
    """Predict ``cases`` of ``route`` into ``out_dir`` (one complete file per case, renamed into place).

    With ``num_processes_preprocessing`` or ``num_processes_export`` 0 nnU-Net's sequential predictor runs in this
    process; else its worker processes as in ``nnUNetv2_predict``. Returns the written case names.
    """
    from nnunet_kd.paths import trainers_findable

    if not cases:
        return []
    lists = case_inputs(route, input_dir, cases)
    file_ending = model_expected_inputs(route.predict_folder).file_ending
    staging = Path(tempfile.mkdtemp(prefix=".nnunet-kd-predict-", dir=out_dir))
    try:
        with contextlib.redirect_stdout(log) if log is not None else contextlib.nullcontext():
            predictor = _predictor_class()(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                           perform_everything_on_device=device.type == "cuda", device=device,
                                           verbose=False, verbose_preprocessing=False, allow_tqdm=False)
            predictor.on_case = on_case
            with trainers_findable():
                predictor.initialize_from_trained_model_folder(str(route.predict_folder), list(route.model.folds),
                                                               predict_checkpoint(route, checkpoint))
            outputs = [str(staging / case) for case in cases]
            if num_processes_preprocessing <= 0 or num_processes_export <= 0:
                predictor.predict_from_files_sequential(lists, outputs, save_probabilities=False, overwrite=True)
            else:
                predictor.predict_from_files(lists, outputs, save_probabilities=False, overwrite=True,
                                             num_processes_preprocessing=num_processes_preprocessing,
                                             num_processes_segmentation_export=num_processes_export)
        written = []
        for case in cases:
            produced = staging / f"{case}{file_ending}"
            if not produced.is_file():
                raise InputDataError(f"case {case}: nnU-Net wrote no segmentation (see {out_dir / PREDICT_LOG})")
            os.replace(produced, out_dir / f"{case}{file_ending}")
            written.append(case)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
