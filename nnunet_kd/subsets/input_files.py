"""Which ``_000X`` files each case of a prediction input folder holds, against the files a model expects.

nnU-Net's predictor only *counts* the files of a case and feeds them to the network in sorted order, so T1 + T2
given to a T1ce + FLAIR student (two files, the right count) would be predicted silently from the wrong
modalities. This module makes the check stock prediction cannot: the suffixes of every case must be exactly the
model's (``student.file_suffixes`` of a reduced dataset.json, else ``_0000`` .. ``_000{n-1}``). It backs
``nnunet-kd check-inputs`` and runs inside every command of ours that predicts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_kd.brats import channel_suffix
from nnunet_kd.errors import ConfigurationError, InputDataError
from nnunet_kd.safe_io import read_json_object
from nnunet_kd.subsets.modalities import RECORD_KEY

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class ExpectedInputs:
    """The files per case a model takes: suffixes in channel order and their modality names."""

    suffixes: tuple[str, ...]
    names: tuple[str, ...]
    file_ending: str
    #: ``{suffix: modality}`` of the dataset the model came from (a student's full dataset), to name wrong files
    dataset_names: Mapping[str, str] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        return ", ".join(f"{n} ({s})" for n, s in zip(self.names, self.suffixes))

    def name_of(self, suffix: str) -> str:
        """``_0000 (T1)`` where the dataset names the channel, else ``_0000``."""
        name = self.dataset_names.get(suffix)
        return f"{suffix} ({name})" if name else suffix


def expected_inputs(dataset_json: Mapping) -> ExpectedInputs:
    """The input files of a model from the dataset.json in its model folder."""
    file_ending = str(dataset_json.get("file_ending", ".nii.gz"))
    record = dataset_json.get(RECORD_KEY) if isinstance(dataset_json.get(RECORD_KEY), Mapping) else {}
    student = record.get("student")
    if student:
        if not isinstance(student, Mapping) or not isinstance(student.get("file_suffixes"), list) or \
                not isinstance(student.get("channel_names"), list):
            raise ConfigurationError(f"dataset.json has a malformed '{RECORD_KEY}.student' record (needs the lists "
                                     f"file_suffixes and channel_names)")
        original = record.get("original_channel_names")
        names = {channel_suffix(int(k)): str(v) for k, v in original.items()} if isinstance(original, Mapping) else {}
        return ExpectedInputs(tuple(student["file_suffixes"]), tuple(student["channel_names"]), file_ending, names)
    channels = dataset_json.get("channel_names") or dataset_json.get("modality")
    if not isinstance(channels, Mapping) or not channels:
        raise ConfigurationError("dataset.json has no channel_names: cannot tell which files a case needs")
    order = sorted(channels, key=int)
    suffixes = tuple(channel_suffix(int(k)) for k in order)
    names = tuple(str(channels[k]) for k in order)
    return ExpectedInputs(suffixes, names, file_ending, dict(zip(suffixes, names)))


def model_expected_inputs(model_folder: Path) -> ExpectedInputs:
    """:func:`expected_inputs` of ``MODEL_FOLDER/dataset.json`` (a trainer__plans__configuration folder)."""
    path = Path(model_folder) / "dataset.json"
    if not path.is_file():
        raise ConfigurationError(f"{model_folder} is not an nnU-Net model folder (no dataset.json)")
    dataset_json = read_json_object(path, "dataset.json")
    try:
        return expected_inputs(dataset_json)
    except ConfigurationError as e:
        raise ConfigurationError(f"{path}: {e}") from None


def case_suffixes(input_dir: Path, file_ending: str) -> tuple[dict[str, list[str]], list[str]]:
    """``{case: [suffixes]}`` of the image files in ``input_dir``, and files whose names are not ``CASE_XXXX``."""
    if not Path(input_dir).is_dir():
        raise InputDataError(f"input folder {input_dir} does not exist")
    cases: dict[str, list[str]] = {}
    odd: list[str] = []
    for path in sorted(Path(input_dir).iterdir()):
        if not path.name.endswith(file_ending) or not path.is_file():
            continue
        match = _CHANNEL_FILE.match(path.name[: -len(file_ending)])
        if match is None:
            odd.append(path.name)
            continue
        cases.setdefault(match["case"], []).append(f"_{match['channel']}")
    return cases, odd


def input_problems(expected: ExpectedInputs, input_dir: Path, only_cases: Iterable[str] | None = None) -> list[str]:
    """One line per case of ``input_dir`` whose files are not exactly ``expected`` (empty when all fit).

    With ``only_cases`` just those cases are checked (a case without any file is reported) and other files are
    ignored: for commands that pick the cases to predict themselves (``evaluate-subsets``: the cases with a label).
    """
    cases, odd = case_suffixes(input_dir, expected.file_ending)
    if only_cases is not None:
        cases = {case: cases.get(case, []) for case in only_cases}
        odd = []
    problems = [f"file {input_dir / name}: name does not end in _XXXX{expected.file_ending} (CASE_0000 style)"
                for name in odd]
    want = set(expected.suffixes)
    for case, suffixes in cases.items():
        have = set(suffixes)
        if sorted(suffixes) == sorted(expected.suffixes):
            continue
        parts = []
        if missing := sorted(want - have):
            parts.append(f"missing {', '.join(expected.name_of(x) for x in missing)}")
        if extra := sorted(have - want):
            parts.append(f"unexpected {', '.join(expected.name_of(x) for x in extra)}")
        if len(suffixes) != len(have):
            parts.append("duplicate suffixes")
        problems.append(f"case {case}: {'; '.join(parts)} (the model takes {expected.describe()})")
    if not cases and not odd:
        problems.append(f"input folder {input_dir} holds no *{expected.file_ending} files")
    return problems


def check_input_folder(model_folder: Path, input_dir: Path, only_cases: Iterable[str] | None = None,
                       shown: int | None = 5) -> ExpectedInputs:
    """Raise :class:`InputDataError` naming the cases of ``input_dir`` that the model in ``model_folder`` cannot take.

    Returns the model's expected inputs when every case fits; see :func:`check_inputs_fit`.
    """
    expected = model_expected_inputs(model_folder)
    check_inputs_fit(expected, input_dir, str(model_folder), only_cases, shown)
    return expected


def check_inputs_fit(expected: ExpectedInputs, input_dir: Path, model: str, only_cases: Iterable[str] | None = None,
                     shown: int | None = 5) -> None:
    """Raise :class:`InputDataError` when :func:`input_problems` finds any; ``model`` names the model in the message.

    The one-line message lists the first ``shown`` problems (``None``: all) and counts the rest.
    """
    problems = input_problems(expected, Path(input_dir), only_cases)
    if problems:
        limit = len(problems) if shown is None else shown
        listed = "; ".join(problems[:limit]) + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")
        raise InputDataError(f"{len(problems)} input problem(s) in {input_dir} for {model}: {listed}")
