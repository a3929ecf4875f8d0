"""``nnunet-kd demo``: the missing-modality workflow end to end on synthetic data, on a CPU."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "run the whole workflow on synthetic data on a CPU (6 minutes measured on a quiet 2-core VM)"
DESCRIPTION = (
    "Synthesises BraTS-like cases, converts them, runs nnUNetv2_plan_and_preprocess, trains the teacher-student\n"
    "KD trainer (nnUNetTrainerBarlowKD_demo: about 4 minutes of training, sized from a measured step), exports\n"
    "its teacher, gives the held-out cases different missing modalities, predicts them all with one\n"
    "`nnunet-kd predict`, prints BraTS metrics per availability group and writes a report with pictures.\n"
    "The numbers are from a tiny CPU run, not a benchmark."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="demo_output", help="folder for all demo outputs (default: demo_output)")
    parser.add_argument("--cases", type=int, default=10, help="labelled training cases (default 10)")
    parser.add_argument("--test-cases", type=int, default=4,
                        help="held-out cases (default 4: one per availability pattern)")
    parser.add_argument("--shape", type=int, default=48, help="edge of the synthetic grid in voxels (default 48)")
    parser.add_argument("--trainer", default="nnUNetTrainerBarlowKD_demo", help="trainer to demonstrate")
    parser.add_argument("--baseline", action="store_true",
                        help="also train the student-only baseline (nnUNetTrainerStudentOnly_demo, a T1ce + FLAIR "
                             "student; --trainer must have the same student) and compare")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"), help="cpu (default) or cuda")
    parser.add_argument("--verbose", action="store_true", help="show every line nnU-Net prints")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nnunet_kd.demo import DemoConfig, format_results, run_demo

    config = DemoConfig(Path(args.workdir), n_train=args.cases, n_test=args.test_cases,
                        shape=(args.shape,) * 3, trainer=args.trainer,
                        baseline="nnUNetTrainerStudentOnly_demo" if args.baseline else None,
                        device=args.device, verbose=args.verbose)
    result = run_demo(config)
    print(format_results(result))
    return 0
