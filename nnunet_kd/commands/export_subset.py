"""``nnunet-kd export-subset``: a model for one modality subset of an any-subset model, for stock prediction."""

from __future__ import annotations

import argparse

NAME = "export-subset"
HELP = "write a model folder that runs an any-subset model on only some modalities (e.g. T2,FLAIR)"
DESCRIPTION = (
    "Writes, next to RESULTS_FOLDER (a model folder trained by nnUNetTrainerBarlowKD_AnySubset or a variant), a model\n"
    "folder for the kept modalities: TRAINER_keep_T2_FLAIR__PLANS__CONFIG. Stock nnUNetv2_predict runs it on folders\n"
    "holding only the kept files per case, with their original suffixes (T1 _0000, T1ce _0001, T2 _0002,\n"
    "FLAIR _0003); the missing channels are filled with zeros after normalisation, as in training:\n"
    "    nnunet-kd export-subset $nnUNet_results/Dataset137_BraTS2021/nnUNetTrainerBarlowKD_AnySubset__nnUNetPlans__3d_fullres \\\n"
    "        --keep T2,FLAIR\n"
    "    nnUNetv2_predict -i t2_flair/ -o pred/ -d 137 -c 3d_fullres -f 0 \\\n"
    "        -tr nnUNetTrainerBarlowKD_AnySubset_keep_T2_FLAIR"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_folder", metavar="RESULTS_FOLDER", help="model folder of the any-subset run")
    parser.add_argument("--keep", required=True, metavar="MODALITIES",
                        help="modalities the exported model takes, e.g. T2,FLAIR (or T2+FLAIR)")
    parser.add_argument("-o", dest="out", help="output model folder (default: TRAINER_keep_<names>__PLANS__CONFIG "
                                               "beside RESULTS_FOLDER)")
    parser.add_argument("-f", dest="folds", nargs="+", help="folds to export (default: all with a checkpoint)")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in each fold")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    from nnunet_kd.subsets.export import export_subset, load_model_folder, zero_fill_record

    out = export_subset(args.model_folder, args.keep, args.out, args.folds, args.checkpoint, args.overwrite)
    dataset_json, _ = load_model_folder(out)
    record = zero_fill_record(dataset_json)
    files = record.kept.describe() if record is not None else "?"
    parts = out.name.split("__")
    print(f"subset model written to {out}")
    print(f"predict with only these files per case: {files}")
    if len(parts) == 3:
        print(f"    nnUNetv2_predict -i IN -o OUT -d DATASET -c {parts[2]} -p {parts[1]} -tr {parts[0]} -f FOLDS")
    print(f"    (or: nnUNetv2_predict_from_modelfolder -i IN -o OUT -m {out} -f FOLDS)")
    return 0
