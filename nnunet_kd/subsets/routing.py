"""Which trained model predicts each case of a folder whose cases miss different modalities.

In a clinic, one case has all four modalities, the next FLAIR + T1ce, another FLAIR only. nnU-Net predicts a folder
with one model that takes a fixed set of files, and only *counts* the files of a case. This module reads which
``_000X`` files each case holds (names from the dataset's channel table), groups cases by availability and picks,
for each group, a model from ``nnUNet_results/DatasetXXX`` by one documented rule (docs/predict.md):

1. **exact**: a model trained on exactly those modalities -- a stock nnU-Net model on all channels, or a KD /
   student-only student whose reduced dataset.json records that subset (:mod:`nnunet_kd.subsets.modalities`);
2. **any-subset**: else the any-subset model (:mod:`nnunet_kd.trainers.any_subset`) exported for that subset
   (:func:`nnunet_kd.subsets.export.export_subset`; for all of its channels, the model folder itself);
3. **superset**: else a model whose modalities are a strict subset of what the case has (the extra files are not
   given to it), the one with the most modalities;
4. **refused**: else the case is refused with one line naming it and what it lacks.

Ties within a rule: a model trained with a teacher before a student-only one (trainer name containing
``StudentOnly``), then more folds, then the folder name (alphabetical) so the choice never depends on disk order.
``--models SUBSET=MODEL_FOLDER`` overrides the rule for one group. Folders written by ``export-subset`` (their
dataset.json records ``zero_filled_input``) are not picked automatically -- the any-subset model they come from is --
but can be named with ``--models``.

A case whose files cannot be read as one modality each (a name without ``_XXXX``, a channel the dataset does not
have, or the same ``_XXXX`` in two image formats) stops the whole run before anything is written: guessing there
could feed a model the wrong modality.

Nothing here imports torch or nnU-Net, so ``--dry-run`` and the unit tests stay fast.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_kd.errors import ConfigurationError, InputDataError
from nnunet_kd.safe_io import read_json_object
from nnunet_kd.subsets.export import ANY_SUBSET_KEY, ZERO_FILL_KEY, default_subset_folder
from nnunet_kd.subsets.modalities import RECORD_KEY, resolve_channels

OVERRIDE = "override"
#: Image endings that could hold a modality: a case file with one of these but not the dataset's is refused.
IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".tif", ".tiff", ".png", ".bmp", ".b2nd")
_CASE_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


# --------------------------------------------------------------------------------------------- channel table


def channel_table(dataset_json: Mapping) -> dict[int, str]:
    """``{index: name}`` of the dataset's channels (a student's dataset.json gives its original, full table)."""
    record = dataset_json.get(RECORD_KEY)
    original = record.get("original_channel_names") if isinstance(record, Mapping) else None
    channels = original or dataset_json.get("channel_names") or dataset_json.get("modality")
    if not isinstance(channels, Mapping) or not channels:
        raise ConfigurationError("dataset.json has no channel_names")
    return {int(k): str(v) for k, v in sorted(channels.items(), key=lambda kv: int(kv[0]))}


def group_name(channels: Sequence[int], table: Mapping[int, str]) -> str:
    """``(1, 3)`` -> ``"T1ce+FLAIR"`` (channel order)."""
    return "+".join(table[i] for i in sorted(channels))


def describe_files(channels: Sequence[int], table: Mapping[int, str]) -> str:
    """``(1, 3)`` -> ``"T1ce (_0001), FLAIR (_0003)"``."""
    return ", ".join(f"{table[i]} (_{i:04d})" for i in sorted(channels))


# --------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Model:
    """A trained model folder and the dataset channels it takes."""

    folder: Path
    channels: tuple[int, ...]
    kind: str  # "full" (no record), "student", "any-subset" or "subset-export"
    folds: tuple[str, ...]
    file_ending: str = ".nii.gz"

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def trainer(self) -> str:
        return self.name.split("__")[0]

    @property
    def student_only(self) -> bool:
        return "StudentOnly" in self.trainer

    def rank(self) -> tuple:
        """Sort key of the tie-break: teacher-trained first, then more folds, then the folder name."""
        return (self.student_only, -len(self.folds), self.name)


def model_folds(folder: Path, folds: Sequence[str] | None, checkpoint: str) -> tuple[str, ...]:
    """The requested folds when all have ``checkpoint`` (else ``()``); by default all folds with one."""
    if folds:
        wanted = tuple(str(f) for f in folds)
        return wanted if all((folder / f"fold_{f}" / checkpoint).is_file() for f in wanted) else ()
    found = [p.name[len("fold_"):] for p in folder.glob("fold_*") if (p / checkpoint).is_file()]
    return tuple(sorted(found, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f)))


def read_model(folder: Path, table: Mapping[int, str] | None, folds: Sequence[str] | None = None,
               checkpoint: str = "checkpoint_final.pth") -> Model:
    """The channels (indices into the dataset's ``table``) and kind of the model in ``folder``.

    Raises :class:`ConfigurationError` for a folder without dataset.json or whose channels are not the dataset's.
    """
    path = folder / "dataset.json"
    if not path.is_file():
        raise ConfigurationError(f"{folder} is not an nnU-Net model folder (no dataset.json)")
    dataset_json = read_json_object(path, "dataset.json")
    record = dataset_json.get(RECORD_KEY) if isinstance(dataset_json.get(RECORD_KEY), Mapping) else {}
    own_table = channel_table(dataset_json)
    if table is not None and own_table != dict(table):
        raise ConfigurationError(f"model {folder}: its channels {list(own_table.values())} are not the dataset's "
                                 f"{list(table.values())}")
    if record.get(ZERO_FILL_KEY):
        kind = "subset-export"
    elif record.get(ANY_SUBSET_KEY):
        kind = "any-subset"
    elif record.get("student"):
        kind = "student"
    else:
        kind = "full"
    student = record.get("student")
    channels = tuple(int(i) for i in student["channel_indices"]) if student else tuple(own_table)
    return Model(folder, tuple(sorted(channels)), kind, model_folds(folder, folds, checkpoint),
                 str(dataset_json.get("file_ending", ".nii.gz")))


def dataset_results_folder(results: Path, dataset: str) -> Path:
    """``$nnUNet_results/DatasetXXX_NAME`` of ``dataset`` given as an id (``137``) or a name."""
    if not results.is_dir():
        raise ConfigurationError(f"nnUNet_results folder {results} does not exist")
    if dataset.isdigit():
        prefix = f"Dataset{int(dataset):03d}_"
        found = sorted(p for p in results.iterdir() if p.is_dir() and p.name.startswith(prefix))
    else:
        found = [results / dataset] if (results / dataset).is_dir() else []
    if len(found) != 1:
        what = "no" if not found else "more than one"
        raise ConfigurationError(f"{what} trained dataset {dataset!r} in {results}"
                                 + (f": {', '.join(p.name for p in found)}" if found else ""))
    return found[0]


def scan_models(dataset_folder: Path, configuration: str, plans: str = "nnUNetPlans",
                folds: Sequence[str] | None = None, checkpoint: str = "checkpoint_final.pth") -> list[Model]:
    """Every ``TRAINER__PLANS__CONFIGURATION`` folder of the dataset with the given plans and configuration.

    Folders without the checkpoints (``-f`` folds, or any fold by default) are left out.
    """
    models = []
    for folder in sorted(dataset_folder.iterdir()):
        parts = folder.name.split("__")
        if not folder.is_dir() or len(parts) != 3 or parts[1] != plans or parts[2] != configuration:
            continue
        if not (folder / "dataset.json").is_file():
            continue
        model = read_model(folder, None, folds, checkpoint)
        if model.folds:
            models.append(model)
    return models


def dataset_channel_table(models: Sequence[Model], raw_dataset_json: Path | None = None) -> dict[int, str]:
    """The dataset's channel table: from its models (they must agree), else from the raw dataset.json."""
    tables = {}
    for model in models:
        tables[model.folder] = channel_table(read_json_object(model.folder / "dataset.json", "dataset.json"))
    distinct = {tuple(sorted(t.items())) for t in tables.values()}
    if len(distinct) > 1:
        raise ConfigurationError("the models of this dataset disagree on its channels: " + "; ".join(
            f"{f.name}: {list(t.values())}" for f, t in tables.items()))
    if distinct:
        return dict(next(iter(distinct)))
    if raw_dataset_json is not None and raw_dataset_json.is_file():
        return channel_table(read_json_object(raw_dataset_json, "dataset.json"))
    raise ConfigurationError("no trained model of this dataset (and no raw dataset.json) tells its channels")


# --------------------------------------------------------------------------------------------- cases


def scan_cases(input_dir: Path, table: Mapping[int, str], file_ending: str) -> dict[str, tuple[int, ...]]:
    """``{case: channels it has}`` of the images in ``input_dir``.

    Raises :class:`InputDataError` (one line naming the files) for a name without ``_XXXX``, a channel the dataset
    lacks, the same ``CASE_XXXX`` in another image format, or a folder without any case.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputDataError(f"input folder {input_dir} does not exist")
    cases: dict[str, set[int]] = {}
    other_format: dict[tuple[str, int], str] = {}
    problems: list[str] = []
    for path in sorted(input_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        ending = next((e for e in sorted({file_ending, *IMAGE_ENDINGS}, key=len, reverse=True)
                       if path.name.endswith(e)), None)
        if ending is None:
            continue  # not an image (a README, a JSON): nnU-Net ignores it too
        match = _CASE_FILE.match(path.name[: -len(ending)])
        if match is None:
            problems.append(f"file {path}: name does not end in _XXXX{ending} (CASE_0000 style)")
            continue
        case, channel = match["case"], int(match["channel"])
        if ending != file_ending:
            other_format[(case, channel)] = path.name
            continue
        if channel not in table:
            problems.append(f"case {case}: file {path.name} is channel _{channel:04d}, which this dataset does not "
                            f"have (channels: {describe_files(list(table), table)})")
            continue
        cases.setdefault(case, set()).add(channel)
    for (case, channel), name in sorted(other_format.items()):
        if channel in cases.get(case, ()):
            problems.append(f"case {case}: duplicate _{channel:04d} file: {name} beside {case}_{channel:04d}"
                            f"{file_ending}")
        else:
            problems.append(f"case {case}: file {name} is not a {file_ending} image, the format of this dataset's "
                            f"models (convert it, or remove it if the case lacks that modality)")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise InputDataError(f"{len(problems)} problem(s) in input folder {input_dir}: {shown}")
    if not cases:
        raise InputDataError(f"input folder {input_dir} holds no *{file_ending} case files (CASE_0000{file_ending})")
    return {case: tuple(sorted(channels)) for case, channels in cases.items()}


# --------------------------------------------------------------------------------------------- the rule


@dataclass
class Route:
    """One availability group: its cases and the model that predicts them (``model`` None: refused)."""

    channels: tuple[int, ...]
    cases: list[str]
    rule: str | None = None
    model: Model | None = None
    #: For the any-subset rule: the exported folder (to be written) that stock nnU-Net would read; else the model's.
    predict_folder: Path | None = None
    #: Channels given to the model (the rest of the case's files are not read).
    fed: tuple[int, ...] = ()
    reason: str = ""
    notes: list[str] = field(default_factory=list)


def _pick(candidates: list[Model], key=None) -> Model | None:
    return min(candidates, key=key or Model.rank) if candidates else None


def choose_model(channels: tuple[int, ...], models: Sequence[Model], export_root: Path,
                 table: Mapping[int, str]) -> Route:
    """The route of one availability group by the module's rule (no override)."""
    have = set(channels)
    route = Route(channels, [])
    automatic = [m for m in models if m.kind != "subset-export"]
    exact = _pick([m for m in automatic if m.kind != "any-subset" and set(m.channels) == have])
    if exact is not None:
        route.rule, route.model, route.predict_folder, route.fed = "exact", exact, exact.folder, exact.channels
        return route
    any_subset = _pick([m for m in automatic if m.kind == "any-subset" and have <= set(m.channels)])
    if any_subset is not None:
        route.rule, route.model, route.fed = "any-subset", any_subset, channels
        route.predict_folder = (any_subset.folder if have == set(any_subset.channels)
                                else subset_export_folder(export_root, any_subset, channels, table))
        return route
    superset = _pick([m for m in automatic if set(m.channels) < have],
                     key=lambda m: (-len(m.channels), *m.rank()))
    if superset is not None:
        route.rule, route.model, route.predict_folder, route.fed = "superset", superset, superset.folder, \
            superset.channels
        ignored = sorted(have - set(superset.channels))
        route.notes.append(f"not given to the model: {describe_files(ignored, table)}")
        return route
    route.reason = refusal_reason(channels, models, table)
    return route


def refusal_reason(channels: tuple[int, ...], models: Sequence[Model], table: Mapping[int, str]) -> str:
    """What a group lacks: the files of the model needing the fewest missing modalities (or: no model at all)."""
    usable = [m for m in models if m.kind != "subset-export"]
    if not usable:
        return "no trained model of this dataset and configuration was found"
    have = set(channels)
    closest = min(usable, key=lambda m: (len(set(m.channels) - have), *m.rank()))
    missing = sorted(set(closest.channels) - have)
    return (f"has {describe_files(channels, table)}; no model takes only these -- the closest, {closest.name}, also "
            f"needs {describe_files(missing, table)}")


def subset_export_folder(export_root: Path, model: Model, channels: Sequence[int], table: Mapping[int, str]) -> Path:
    """Where the subset model of an any-subset model is exported (``TRAINER_keep_T2_FLAIR__PLANS__CONF``)."""
    keep = ",".join(table[i] for i in sorted(channels))
    return export_root / default_subset_folder(model.folder, keep).name


def parse_overrides(items: Sequence[str] | None, table: Mapping[int, str], dataset_folder: Path,
                    folds: Sequence[str] | None, checkpoint: str) -> dict[tuple[int, ...], Model]:
    """``["T2,FLAIR=FOLDER", ...]`` -> ``{channels: model}``; FOLDER is a path or a folder name in the dataset."""
    overrides: dict[tuple[int, ...], Model] = {}
    names = {str(k): v for k, v in table.items()}
    for item in items or []:
        subset_text, sep, folder_text = item.partition("=")
        if not sep or not subset_text.strip() or not folder_text.strip():
            raise ConfigurationError(f"--models {item!r}: write SUBSET=MODEL_FOLDER, e.g. T1ce,FLAIR=/path/to/"
                                     f"TRAINER__PLANS__CONFIG")
        subset = resolve_channels(names, [s for s in subset_text.replace("+", ",").split(",") if s.strip()])
        channels = tuple(subset.indices)
        folder = Path(folder_text)
        if not folder.is_dir() and (dataset_folder / folder_text).is_dir():
            folder = dataset_folder / folder_text
        if not folder.is_dir():
            raise ConfigurationError(f"--models {item!r}: model folder {folder_text} does not exist (give a path, or "
                                     f"a folder name in {dataset_folder})")
        model = read_model(folder, table, folds, checkpoint)
        if not model.folds:
            wanted = f"folds {', '.join(folds)}" if folds else "any fold"
            raise ConfigurationError(f"--models {item!r}: {folder} has no {checkpoint} for {wanted}")
        if channels in overrides:
            raise ConfigurationError(f"--models names subset {group_name(channels, table)} twice")
        overrides[channels] = model
    return overrides


def override_route(channels: tuple[int, ...], model: Model, export_root: Path, table: Mapping[int, str]) -> Route:
    """The route of a group whose model the user named (it must not need files the group lacks)."""
    have = set(channels)
    route = Route(channels, [], rule=OVERRIDE, model=model)
    if model.kind == "any-subset" and have <= set(model.channels):
        route.fed = channels
        route.predict_folder = model.folder if have == set(model.channels) else \
            subset_export_folder(export_root, model, channels, table)
        return route
    if not set(model.channels) <= have:
        missing = sorted(set(model.channels) - have)
        raise ConfigurationError(f"--models {group_name(channels, table)}={model.folder}: the model needs "
                                 f"{describe_files(missing, table)}, which these cases do not have")
    route.predict_folder, route.fed = model.folder, model.channels
    if ignored := sorted(have - set(model.channels)):
        route.notes.append(f"not given to the model: {describe_files(ignored, table)}")
    return route


def route_cases(cases: Mapping[str, tuple[int, ...]], models: Sequence[Model], table: Mapping[int, str],
                export_root: Path, overrides: Mapping[tuple[int, ...], Model] | None = None) -> list[Route]:
    """One :class:`Route` per availability group (most modalities first), its cases sorted."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for case, channels in sorted(cases.items()):
        groups.setdefault(tuple(sorted(channels)), []).append(case)
    overrides = dict(overrides or {})
    routes = []
    for channels in sorted(groups, key=lambda c: (-len(c), c)):
        if channels in overrides:
            route = override_route(channels, overrides[channels], export_root, table)
        else:
            route = choose_model(channels, models, export_root, table)
        route.cases = groups[channels]
        routes.append(route)
    return routes


# --------------------------------------------------------------------------------------------- reporting


def routing_table(routes: Sequence[Route], table: Mapping[int, str]) -> str:
    """The routing table as aligned text: group, cases, rule, model, folds (and one line per refused case)."""
    rows = [("group", "cases", "rule", "model", "folds")]
    for r in routes:
        if r.model is None:
            rows.append((group_name(r.channels, table), str(len(r.cases)), "refused", "-", "-"))
        else:
            name = r.predict_folder.name if r.predict_folder is not None else r.model.name
            rows.append((group_name(r.channels, table), str(len(r.cases)), r.rule or "", name,
                         ",".join(r.model.folds)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    for r in routes:
        if r.model is not None and r.predict_folder is not None and r.predict_folder != r.model.folder:
            lines.append(f"  {group_name(r.channels, table)}: exported from {r.model.folder} into "
                         f"{r.predict_folder.parent}")
        for note in r.notes:
            lines.append(f"  {group_name(r.channels, table)}: {note}")
    for r in routes:
        if r.model is None:
            for case in r.cases:
                lines.append(f"refused: case {case}: {r.reason}")
    return "\n".join(lines)


def routing_record(routes: Sequence[Route], table: Mapping[int, str], settings: Mapping) -> dict:
    """The content of ``OUT/routing.json``: settings, one entry per group and per case."""
    groups, per_case = [], {}
    for r in routes:
        name = group_name(r.channels, table)
        entry = {"group": name, "modalities": [table[i] for i in r.channels],
                 "files": [f"_{i:04d}" for i in r.channels], "cases": list(r.cases), "rule": r.rule or "refused"}
        if r.model is not None:
            entry.update({"model_folder": str(r.model.folder), "model_kind": r.model.kind,
                          "trainer": r.model.trainer, "folds": list(r.model.folds),
                          "predict_folder": str(r.predict_folder),
                          "files_fed": [f"_{i:04d}" for i in r.fed],
                          "files_ignored": [f"_{i:04d}" for i in r.channels if i not in r.fed]})
        else:
            entry["reason"] = r.reason
        entry["notes"] = list(r.notes)
        groups.append(entry)
        for case in r.cases:
            per_case[case] = {"group": name, "rule": r.rule or "refused",
                              "model_folder": str(r.predict_folder) if r.model is not None else None,
                              "folds": list(r.model.folds) if r.model is not None else []}
    return {**settings, "channels": {f"_{i:04d}": n for i, n in table.items()}, "groups": groups,
            "cases": dict(sorted(per_case.items()))}


def read_routing(path: str | os.PathLike) -> dict:
    """A ``routing.json`` written by ``nnunet-kd predict`` (one-line errors for a missing or malformed file)."""
    record = read_json_object(Path(path), "routing.json")
    if not isinstance(record.get("cases"), dict) or not isinstance(record.get("groups"), list):
        raise InputDataError(f"{path} is not a routing.json written by nnunet-kd predict (no cases/groups)")
    return record


# --------------------------------------------------------------------------------------------- scores per group

#: Columns of ``summary_by_group.csv`` after ``group`` and ``n_cases``: mean Dice and HD95 per region.
GROUP_SCORE_METRICS = ("dice", "hd95")
UNROUTED = "(not in routing.json)"
#: The file ``evaluate --group-by-routing`` writes beside ``per_case.csv``; ``summary.json`` then holds the
#: case-to-group map under :data:`GROUPS_KEY` (what ``nnunet-kd report`` groups by).
GROUP_SUMMARY_CSV = "summary_by_group.csv"
GROUPS_KEY = "availability_groups"


def availability_groups(rows: Sequence[Mapping], record: Mapping, routing_json: str | os.PathLike = "") -> dict:
    """The ``summary.json`` entry of ``evaluate --group-by-routing``: ``routing_json``, ``groups`` (the groups of
    the evaluated cases in routing.json's order, most modalities first; cases that routing.json does not list form
    the group :data:`UNROUTED`, last) and ``cases`` (``{case: group}``)."""
    listed = record.get("cases", {})
    cases = {row["case"]: listed.get(row["case"], {}).get("group", UNROUTED) for row in rows}
    order = [g["group"] for g in record.get("groups", [])] + [UNROUTED]
    present = set(cases.values())
    return {"routing_json": str(Path(routing_json).resolve()) if routing_json else "",
            "groups": [g for g in dict.fromkeys(order) if g in present], "cases": cases}


def group_score_columns(regions: Sequence[str]) -> list[str]:
    """Columns of :func:`scores_by_group` rows: ``group``, ``n_cases``, ``<REGION>_<metric>`` per region."""
    return ["group", "n_cases", *(f"{r}_{m}" for r in regions for m in GROUP_SCORE_METRICS)]


def scores_by_group(rows: Sequence[Mapping], record: Mapping, regions: Sequence[str] | None = None) -> list[dict]:
    """Mean Dice / HD95 per region of the evaluated cases, per availability group of a ``routing.json``.

    ``rows`` are the per-case rows of :func:`nnunet_kd.evaluation.evaluate.evaluate_folders`; ``regions`` their
    evaluated regions (the summary's ``regions``, i.e. the dataset kind's: WT, TC, ET, NETC, SNFH, RC for
    GLI-POST; default: the regions with columns in ``rows``). Groups as in :func:`availability_groups`. The means
    are those of :func:`nnunet_kd.evaluation.evaluate.summarize` (NaN excluded).
    """
    from nnunet_kd.evaluation.evaluate import regions_of_rows, summarize

    regions = list(regions) if regions is not None else regions_of_rows(rows)
    grouping = availability_groups(rows, record)
    out = []
    for group in grouping["groups"]:
        members = [row for row in rows if grouping["cases"][row["case"]] == group]
        stats = summarize(members, regions)
        entry = {"group": group, "n_cases": len(members)}
        for region in regions:
            for metric in GROUP_SCORE_METRICS:
                entry[f"{region}_{metric}"] = stats[region][metric]["mean"]
        out.append(entry)
    return out


def format_scores_by_group(scores: Sequence[Mapping]) -> str:
    """A plain-text table of :func:`scores_by_group` (Dice as a fraction, HD95 in mm)."""
    if not scores:
        return "no evaluated case"
    columns = [k for k in scores[0] if k not in ("group", "n_cases")]
    header = ["group", "cases", *columns]
    lines = [[s["group"], str(s["n_cases"]), *(f"{s[c]:.2f}" if "hd95" in c else f"{s[c]:.4f}" for c in columns)]
             for s in scores]
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *lines])
