"""``nnunet-kd predict``: predict a folder whose cases miss different modalities, each with a model that fits it."""

from __future__ import annotations

import argparse

NAME = "predict"
HELP = "predict a folder of cases with different missing modalities, routing each group to a fitting model"
DESCRIPTION = (
    "Reads which _000X files each case of IN holds (names from the dataset's channel table), groups cases by\n"
    "available modalities and predicts each group with a model of $nnUNet_results/DatasetXXX (configuration -c,\n"
    "plans -p), chosen by this rule (docs/predict.md):\n"
    "  1. exact       a model trained on exactly those modalities (stock model on all four, KD / student-only\n"
    "                 student of that subset);\n"
    "  2. any-subset  else the any-subset model, exported for that subset into OUT/subset_models/;\n"
    "  3. superset    else the model with the most modalities among those the case has (extra files not read);\n"
    "  4. refused     else the case is refused, with one line naming what it lacks (exit status 3).\n"
    "Ties: teacher-trained before StudentOnly, then more folds, then folder name. --models SUBSET=MODEL_FOLDER\n"
    "overrides the rule for one group. Prints the routing table and writes OUT/routing.json before predicting;\n"
    "predictions go through nnU-Net's nnUNetPredictor as in nnUNetv2_predict, one file per case in OUT. Example:\n"
    "    nnunet-kd predict -i cases/ -o pred/ -d 137 -c 3d_fullres -f 0 1 2 3 4\n"
    "    nnunet-kd predict -i cases/ -o pred/ -d 137 --models T1ce,FLAIR=nnUNetTrainerStudentOnly__nnUNetPlans__3d_fullres"
)

#: Exit status when some cases were refused (the others were predicted).
EXIT_REFUSED = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", dest="input", required=True, help="input folder: CASE_000X files, any subset per case")
    parser.add_argument("-o", dest="out", required=True, help="output folder (CASE.nii.gz, routing.json)")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name (its trained models are used)")
    parser.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration (default: 3d_fullres)")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-f", dest="folds", nargs="+", default=None,
                        help="folds to ensemble; models without all of them are not used (default: each model's "
                             "folds with a checkpoint)")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step (as nnUNetv2_predict)")
    parser.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    parser.add_argument("-npp", type=int, default=3, help="preprocessing processes (0: predict in this process)")
    parser.add_argument("-nps", type=int, default=3, help="segmentation export processes (0: in this process)")
    parser.add_argument("--device", "-device", dest="device", default=None, choices=("cuda", "cpu", "mps"),
                        help="device (default: cuda if available, else cpu)")
    parser.add_argument("--models", nargs="+", metavar="SUBSET=MODEL_FOLDER", default=None,
                        help="model for one availability group, e.g. T1ce,FLAIR=/path/TRAINER__PLANS__CONF (or a "
                             "folder name in the dataset's results folder)")
    parser.add_argument("--dry-run", action="store_true", help="print the routing table, write routing.json, stop")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="skip cases already in OUT predicted by the same model, folds and settings")


def _file_ending(models, raw_json) -> str:
    if models:
        return models[0].file_ending
    from nnunet_kd.safe_io import read_json_object

    if raw_json is not None and raw_json.is_file():
        return str(read_json_object(raw_json, "dataset.json").get("file_ending", ".nii.gz"))
    return ".nii.gz"


def _previous(path, resume: bool) -> dict | None:
    from nnunet_kd.errors import InputDataError
    from nnunet_kd.subsets.routing import read_routing

    if not resume or not path.is_file():
        return None
    try:
        return read_routing(path)
    except InputDataError:
        return None


SETTINGS_COMPARED = ("dataset", "configuration", "plans", "checkpoint", "disable_tta", "step_size")


def run(args: argparse.Namespace) -> int:
    import importlib.metadata
    import json
    from pathlib import Path

    from nnunet_kd import __version__
    from nnunet_kd.errors import ConfigurationError, InputDataError
    from nnunet_kd.evaluation.evaluate import atomic_write_text
    from nnunet_kd.paths import nnunet_raw, nnunet_results
    from nnunet_kd.subsets.routed_prediction import EXPORT_DIR
    from nnunet_kd.subsets.routing import (
        dataset_channel_table,
        dataset_results_folder,
        group_name,
        parse_overrides,
        route_cases,
        routing_record,
        routing_table,
        scan_cases,
        scan_models,
    )

    input_dir, out = Path(args.input), Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputDataError(f"output {out} exists and is not a folder")
    if input_dir.is_dir() and out.exists() and out.resolve() == input_dir.resolve():
        raise InputDataError(f"output folder {out} is the input folder; choose another")
    dataset_folder = dataset_results_folder(nnunet_results(), args.dataset)
    folds = [str(f) for f in args.folds] if args.folds else None
    models = scan_models(dataset_folder, args.configuration, args.plans, folds, args.checkpoint)
    try:
        raw_json: Path | None = nnunet_raw() / dataset_folder.name / "dataset.json"
    except ConfigurationError:
        raw_json = None
    table = dataset_channel_table(models, raw_json)
    file_ending = _file_ending(models, raw_json)
    cases = scan_cases(input_dir, table, file_ending)
    overrides = parse_overrides(args.models, table, dataset_folder, folds, args.checkpoint)
    routes = route_cases(cases, models, table, out / EXPORT_DIR, overrides)
    present = {r.channels for r in routes}
    for channels in overrides:
        if channels not in present:
            print(f"note: --models {group_name(channels, table)}: no case has exactly these modalities")

    try:
        nnunet_version = importlib.metadata.version("nnunetv2")
    except importlib.metadata.PackageNotFoundError:
        nnunet_version = "unknown"
    settings = {"nnunet_kd_version": __version__, "nnunet_version": nnunet_version,
                "dataset": dataset_folder.name, "configuration": args.configuration, "plans": args.plans,
                "checkpoint": args.checkpoint, "folds_requested": folds, "disable_tta": bool(args.disable_tta),
                "step_size": args.step_size, "file_ending": file_ending, "input_folder": str(input_dir.resolve())}
    record = routing_record(routes, table, settings)
    previous = _previous(out / "routing.json", args.resume)
    print(routing_table(routes, table))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "routing.json", json.dumps(record, indent=2) + "\n")
    refused = [case for r in routes if r.model is None for case in r.cases]
    if args.dry_run:
        print(f"dry run: routing written to {out / 'routing.json'}; nothing predicted")
        return EXIT_REFUSED if refused else 0
    return _predict(args, routes, record, previous, input_dir, out, refused)


def _finished(case: str, out, ending: str, record: dict, previous: dict | None) -> bool:
    if previous is None or not (out / f"{case}{ending}").is_file():
        return False
    if any(previous.get(k) != record.get(k) for k in SETTINGS_COMPARED):
        return False
    before, now = previous["cases"].get(case, {}), record["cases"][case]
    return before.get("model_folder") == now["model_folder"] and before.get("folds") == now["folds"]


def _predict(args, routes, record, previous, input_dir, out, refused) -> int:
    import sys

    import torch
    from tqdm import tqdm

    from nnunet_kd.subsets.input_files import model_expected_inputs
    from nnunet_kd.subsets.routed_prediction import PREDICT_LOG, ensure_exported, predict_route, set_torch_threads

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    set_torch_threads(device)
    plans = []  # (route, cases to predict)
    skipped = 0
    for route in routes:
        if route.model is None:
            continue
        exported = ensure_exported(route, args.checkpoint)
        if exported:  # new, or its source was retrained: earlier outputs of this group are not its predictions
            print(f"exported {route.model.name} for {record_group(record, route)} to {route.predict_folder}")
        ending = model_expected_inputs(route.predict_folder).file_ending
        todo = [c for c in route.cases
                if exported or not (args.resume and _finished(c, out, ending, record, previous))]
        skipped += len(route.cases) - len(todo)
        plans.append((route, todo))
    total = sum(len(todo) for _, todo in plans)
    written = 0
    with open(out / PREDICT_LOG, "a") as log, \
            tqdm(total=total, desc="predict", unit="case", disable=not sys.stderr.isatty()) as bar:
        for route, todo in plans:
            bar.set_postfix_str(record_group(record, route))
            written += len(predict_route(route, todo, input_dir, out, device, not args.disable_tta, args.step_size,
                                         args.checkpoint, args.npp, args.nps, on_case=lambda: bar.update(1),
                                         log=log))
    for case in refused:
        leftover = out / f"{case}{record.get('file_ending', '.nii.gz')}"
        if leftover.is_file():
            print(f"note: case {case} is refused now, but {leftover} from an earlier run is still there")
    finished = f", {skipped} already finished (--continue)" if args.resume else ""
    print(f"{written} case(s) predicted{finished}, {len(refused)} refused; segmentations in {out}, routing in "
          f"{out / 'routing.json'}")
    return EXIT_REFUSED if refused else 0


def record_group(record: dict, route) -> str:
    """The group's name (``T1ce+FLAIR``) from routing.json's channel table."""
    return "+".join(record["channels"][f"_{i:04d}"] for i in route.channels)
