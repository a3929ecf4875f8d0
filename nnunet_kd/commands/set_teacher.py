"""``nnunet-kd set-teacher``: name the trained 4-channel nnU-Net model that two-stage KD trainers distil from."""

from __future__ import annotations

import argparse

NAME = "set-teacher"
HELP = "name an existing trained nnU-Net model as the teacher of the FrozenTeacher / WarmTeacher KD trainers"
DESCRIPTION = (
    "Checks a stock nnU-Net model folder of the same dataset, plans and configuration\n"
    "($nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG) and writes\n"
    "$nnUNet_preprocessed/DatasetXXX/nnunet_kd_teacher__PLANS__CONFIG.json, which the KD trainers read at start:\n"
    "    nnUNetv2_train 137 3d_fullres 0                       # the teacher, all 4 modalities\n"
    "    nnunet-kd set-teacher -d 137 -c 3d_fullres --teacher-trainer nnUNetTrainer\n"
    "    nnUNetv2_train 137 3d_fullres 0 -tr nnUNetTrainerBarlowKD_FrozenTeacher\n"
    "Each KD fold uses the teacher's checkpoint of the same fold (so no validation case was in the teacher's\n"
    "training data) unless --teacher-fold pins one."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    parser.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("--teacher-trainer", default="nnUNetTrainer",
                        help="trainer the teacher was trained with (default nnUNetTrainer)")
    parser.add_argument("--teacher-plans", "-p", default="nnUNetPlans",
                        help="plans identifier of the teacher, and of the KD runs using it (default nnUNetPlans)")
    parser.add_argument("--teacher-fold", default=None,
                        help="always use this teacher fold (0-4 or 'all'); default: the KD run's own fold")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file in the teacher's fold folders (default checkpoint_final.pth)")


def run(args: argparse.Namespace) -> int:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_kd.errors import ConfigurationError
    from nnunet_kd.paths import nnunet_preprocessed
    from nnunet_kd.safe_io import read_json_object
    from nnunet_kd.trainers.teacher_config import (
        TeacherConfig,
        available_teacher_folds,
        check_teacher_checkpoint,
        load_teacher_checkpoint,
        parse_fold,
        teacher_checkpoint_file,
        teacher_model_folder,
        write_teacher_config,
    )

    try:
        dataset_name = maybe_convert_to_dataset_name(args.dataset)
    except RuntimeError as e:
        raise ConfigurationError(str(e).splitlines()[0].split(" Here are")[0]) from None
    base = nnunet_preprocessed() / dataset_name
    plans_file = base / f"{args.teacher_plans}.json"
    if not plans_file.is_file():
        raise ConfigurationError(f"plans {plans_file} do not exist; run nnUNetv2_plan_and_preprocess first")
    plans = read_json_object(plans_file, "plans")
    if args.configuration not in plans.get("configurations", {}):
        raise ConfigurationError(f"configuration {args.configuration} is not in {plans_file}; choose one of "
                                 f"{', '.join(plans.get('configurations', {}))}")
    dataset_json = read_json_object(base / "dataset.json", "dataset.json")

    fold = parse_fold(args.teacher_fold, "--teacher-fold") if args.teacher_fold is not None else None
    config = TeacherConfig(args.teacher_trainer, args.teacher_plans, args.configuration, fold, args.checkpoint)
    folder = teacher_model_folder(dataset_name, config)
    folds = [fold] if fold is not None else available_teacher_folds(folder, config.checkpoint)
    if fold is None and not folds:
        teacher_checkpoint_file(dataset_name, config, 0)  # raises the error naming what is missing
    for f in folds:
        path = teacher_checkpoint_file(dataset_name, config, f)
        check_teacher_checkpoint(load_teacher_checkpoint(path), plans, args.configuration, dataset_json, path)
    path = write_teacher_config(dataset_name, config)
    which = f"teacher fold {fold} for every KD fold" if fold is not None else \
        f"each KD fold uses the same teacher fold; trained folds: {', '.join(map(str, folds))}"
    print(f"teacher {folder} ({which}) written to {path}")
    return 0
