#!/usr/bin/env bash
# The reproduction protocol of docs/reproduce.md on a reduced budget: one split of a BraTS training release,
# 1 fold (FOLDS), few epochs (EPOCHS), every model of seed 000 and seed 001, one comparison table.
#
#   scripts/reproduce_reduced.sh SOURCE=/data/BraTS2021_TrainingData [KEY=VALUE ...]
#
# Settings (KEY=VALUE arguments or environment variables; defaults in brackets):
#   SOURCE            BraTS release folder, or a folder holding releases (e.g. training + validation data,
#                     whose unlabelled cases join the unlabelled pool)                         [required]
#   WORK              everything goes here: nnUNet_raw/, nnUNet_preprocessed/, nnUNet_results/, predictions,
#                     evaluations, report/, comparison.md                         [./nnunet_kd_reproduce]
#   DATASET_ID        nnU-Net id of the training dataset; DATASET_ID+1 is the distillation dataset    [521]
#   NAME              dataset name                                                                  [BraTS]
#   FOLDS             folds to train, e.g. "0" or "0 1 2 3 4"                                           [0]
#   EPOCHS            epochs per training; generates <trainer>_<EPOCHS>epochs variants in WORK/trainers [50]
#   TRAINER_SUFFIX    use existing trainers <trainer><SUFFIX> instead (e.g. _smoke on a CPU; set it empty
#                     for nnU-Net's full 1000 epochs); when set, EPOCHS is ignored                  [unset]
#   DEVICE            cuda, cpu or mps                                                               [cuda]
#   TEST_EVERY        every n-th case (sorted ids, from the first) is held out as labelled test set     [5]
#   UNLABELED_EVERY   every n-th case (from the second) joins the unlabelled pool, labels hidden; 0 = only
#                     cases that come without labels                                                    [5]
#   ARCHITECTURES     seed-001 stand-alone models                     ["UNet ResidualUNet CascadedUNet"]
#   DISTILL_ARCH      architecture of the distilled model (the paper's best stand-alone one) [ResidualUNet]
#   SKIP              comma-separated steps to leave out: teacher, student, kd, architectures, distill  []
#   INCLUDE_EMPTY     1: keep empty pseudo-labels in the distillation dataset                            [0]
#   TTA               0: no test-time mirroring when predicting                                          [1]
#   NUM_PROCESSES     worker processes for preprocessing, prediction export and evaluation              [4]
#   PYTHON            Python of the environment where nnunet-kd is installed                       [python3]
#   DRY_RUN           1: write WORK/trainers and print the commands instead of running them              [0]
#
# Steps (each logged with its wall time in WORK/timings.tsv; a finished step is not redone when the script
# is run again with the same WORK, and interrupted trainings continue from checkpoint_latest.pth):
#   convert -> split (test set, unlabelled pool, training set) -> plan/preprocess -> train teacher (stock, 4
#   modalities), student only and BarlowKD (T1ce + FLAIR), UNet / ResidualUNet / CascadedUNet -> predict the
#   test set -> ensemble of the architectures on the test set and pseudo-labels of the pool -> distillation
#   dataset -> distilled model -> nnunet-kd evaluate -> nnunet-kd report -> WORK/comparison.md (ours next to the
#   published numbers).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    *=*) export "${arg?}" ;;
    *) echo "reproduce_reduced.sh: error: unexpected argument '$arg' (use KEY=VALUE, see --help)" >&2; exit 2 ;;
  esac
done

SOURCE=${SOURCE:-}
WORK=${WORK:-$PWD/nnunet_kd_reproduce}
DATASET_ID=${DATASET_ID:-521}
NAME=${NAME:-BraTS}
FOLDS=${FOLDS:-0}
EPOCHS=${EPOCHS:-50}
DEVICE=${DEVICE:-cuda}
TEST_EVERY=${TEST_EVERY:-5}
UNLABELED_EVERY=${UNLABELED_EVERY:-5}
ARCHITECTURES=${ARCHITECTURES:-UNet ResidualUNet CascadedUNet}
DISTILL_ARCH=${DISTILL_ARCH:-ResidualUNet}
SKIP=${SKIP:-}
INCLUDE_EMPTY=${INCLUDE_EMPTY:-0}
TTA=${TTA:-1}
NUM_PROCESSES=${NUM_PROCESSES:-4}
PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}

die() { echo "reproduce_reduced.sh: error: $*" >&2; exit 2; }
[ -n "$SOURCE" ] || die "SOURCE is not set: pass SOURCE=/path/to/BraTS2021_TrainingData (see --help)"
[ -d "$SOURCE" ] || die "SOURCE $SOURCE is not a folder"
for tool in nnunet-kd nnUNetv2_plan_and_preprocess nnUNetv2_train nnUNetv2_predict "$PYTHON"; do
  command -v "$tool" >/dev/null || die "'$tool' not found: activate the environment where nnunet-kd is installed"
done
case "$DATASET_ID" in ''|*[!0-9]*) die "DATASET_ID must be a number, got '$DATASET_ID'" ;; esac
[ "$DATASET_ID" -ge 1 ] && [ "$DATASET_ID" -le 998 ] || die "DATASET_ID must be 1..998 (DATASET_ID+1 is used too)"
[ "$TEST_EVERY" -ge 2 ] 2>/dev/null || die "TEST_EVERY must be a number >= 2, got '$TEST_EVERY'"
skipped() { case ",$SKIP," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
SOURCE=$(cd "$SOURCE" && pwd)
export nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed" nnUNet_results="$WORK/nnUNet_results"
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results" "$WORK/pred" "$WORK/eval" "$WORK/.done"
DISTILL_ID=$((DATASET_ID + 1))
DS=$(printf 'Dataset%03d_%s' "$DATASET_ID" "$NAME")
DS_DISTILL=$(printf 'Dataset%03d_%sDistill' "$DISTILL_ID" "$NAME")
TEST_IMAGES="$WORK/test_set/images"
TEST_LABELS="$WORK/test_set/labels"
TEST_STUDENT_IMAGES="$WORK/test_set/images_t1ce_flair"
UNLABELED="$nnUNet_raw/$DS/imagesTs"
TIMINGS="$WORK/timings.tsv"
[ -f "$TIMINGS" ] || printf 'step\tseconds\n' > "$TIMINGS"

# ------------------------------------------------------------------------------------------ trainer names
if [ "${TRAINER_SUFFIX+set}" = set ]; then
  SFX=$TRAINER_SUFFIX
  EXT=$(nnunet-kd ext-path)
else
  case "$EPOCHS" in ''|*[!0-9]*|0) die "EPOCHS must be a positive number, got '$EPOCHS'" ;; esac
  SFX="_${EPOCHS}epochs"
  mkdir -p "$WORK/trainers"
  "$PYTHON" - "$WORK/trainers/nnunet_kd_reproduce_trainers.py" "$EPOCHS" "$ARCHITECTURES" "$DISTILL_ARCH" <<'PY'
import sys
from pathlib import Path

path, epochs, archs, distill = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(), sys.argv[4]
bases = ["nnUNetTrainer", "nnUNetTrainerStudentOnly", "nnUNetTrainerBarlowKD"]
bases += [f"nnUNetTrainer{a}" for a in archs] + [f"nnUNetTrainer{distill}Distill"]
lines = [f'"""Generated by scripts/reproduce_reduced.sh: {epochs}-epoch variants of the protocol\'s trainers."""',
         "import torch",
         "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer"]
lines += [f"from nnunet_kd.trainer_registry.nnunet_kd_trainers import {b}" for b in dict.fromkeys(bases[1:])]
for base in dict.fromkeys(bases):
    lines += ["", "", f"class {base}_{epochs}epochs({base}):",
              "    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):",
              "        super().__init__(plans, configuration, fold, dataset_json, device)",
              f"        self.num_epochs = {epochs}"]
path.write_text("\n".join(lines) + "\n")
PY
  EXT="$(nnunet-kd ext-path):$WORK/trainers"
fi
export nnUNet_extTrainer="$EXT"
TEACHER=nnUNetTrainer$SFX
STUDENT=nnUNetTrainerStudentOnly$SFX
KD=nnUNetTrainerBarlowKD$SFX
DISTILLED=nnUNetTrainer${DISTILL_ARCH}Distill$SFX
model_dir() { echo "$nnUNet_results/$1/$2__nnUNetPlans__3d_fullres"; }

PREDICT_OPTS=(-c 3d_fullres -device "$DEVICE" -npp "$NUM_PROCESSES" -nps "$NUM_PROCESSES" --disable_progress_bar)
[ "$TTA" = 1 ] || PREDICT_OPTS+=(--disable_tta)
PSEUDO_OPTS=(-device "$DEVICE" --no-progress)
[ "$TTA" = 1 ] || PSEUDO_OPTS+=(--disable-tta)

# ------------------------------------------------------------------------------------------ helpers
# step NAME COMMAND...: run once per WORK (marker in WORK/.done), log the wall time.
step() {
  local name=$1; shift
  if [ -f "$WORK/.done/$name" ]; then echo "== $name: done before, skipped"; return 0; fi
  if [ "$DRY_RUN" = 1 ]; then echo "== $name: $*"; return 0; fi
  echo "== $name"
  local t0=$SECONDS
  "$@"
  printf '%s\t%s\n' "$name" "$((SECONDS - t0))" >> "$TIMINGS"
  touch "$WORK/.done/$name"
}

# train DATASET TRAINER: every fold of FOLDS; a fold with checkpoint_latest.pth continues (--c).
train() {
  local dataset=$1 trainer=$2 fold
  for fold in $FOLDS; do
    local dir; dir="$(model_dir "$(dataset_name "$dataset")" "$trainer")/fold_$fold"
    local cont=()
    [ -f "$dir/checkpoint_latest.pth" ] && cont=(--c)
    step "train_${trainer}_${dataset}_fold$fold" nnUNetv2_train "$dataset" 3d_fullres "$fold" -tr "$trainer" \
      -device "$DEVICE" "${cont[@]}"
  done
}
dataset_name() { if [ "$1" = "$DATASET_ID" ]; then echo "$DS"; else echo "$DS_DISTILL"; fi; }

# predict NAME DATASET TRAINER IMAGES: the test set with every trained fold (averaged), into WORK/pred/NAME.
predict() {
  # shellcheck disable=SC2086
  step "predict_$1" nnUNetv2_predict -i "$4" -o "$WORK/pred/$1" -d "$2" -tr "$3" -f $FOLDS "${PREDICT_OPTS[@]}"
}

# nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which refuses 0 (a value used on CPUs).
planning() { nnUNet_n_proc_DA=$(( ${nnUNet_n_proc_DA:-1} > 0 ? ${nnUNet_n_proc_DA:-1} : 1 )) "$@"; }

evaluate() {
  step "evaluate_$1" nnunet-kd evaluate "$2" "$TEST_LABELS" -o "$WORK/eval/$1" -np "$NUM_PROCESSES" --no-progress --overwrite
}

split_dataset() {
  "$PYTHON" - "$nnUNet_raw/$DS" "$WORK/test_set" "$WORK/heldout_pool_labels" "$TEST_EVERY" "$UNLABELED_EVERY" <<'PY'
"""Hold out every TEST_EVERY-th labelled case (with labels) and hide the labels of every UNLABELED_EVERY-th."""
import json
import shutil
import sys
from pathlib import Path

raw, test, hidden = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
test_every, unlabeled_every = int(sys.argv[4]), int(sys.argv[5])
meta = json.loads((raw / "dataset.json").read_text())
ending = meta["file_ending"]
cases = sorted(p.name[: -len(ending)] for p in (raw / "labelsTr").iterdir() if p.name.endswith(ending))
test_cases = [c for i, c in enumerate(cases) if i % test_every == 0]
pool = [c for i, c in enumerate(cases) if unlabeled_every > 0 and i % test_every != 0 and i % unlabeled_every == 1]
if len(cases) - len(test_cases) - len(pool) < 5:
    sys.exit(f"only {len(cases)} labelled cases: fewer than 5 would be left for 5-fold training")
for folder in (test / "images", test / "labels", hidden, raw / "imagesTs"):
    folder.mkdir(parents=True, exist_ok=True)
channels = [f"_{int(k):04d}" for k in meta["channel_names"]]
for case in test_cases + pool:
    images_to = test / "images" if case in test_cases else raw / "imagesTs"
    for ch in channels:
        shutil.move(raw / "imagesTr" / f"{case}{ch}{ending}", images_to / f"{case}{ch}{ending}")
    shutil.move(raw / "labelsTr" / f"{case}{ending}", (test / "labels" if case in test_cases else hidden) /
                f"{case}{ending}")
meta["numTraining"] = len(cases) - len(test_cases) - len(pool)
meta["numTest"] = len(list((raw / "imagesTs").glob(f"*{channels[0]}{ending}")))
meta["nnunet_kd_reproduce_split"] = {"test": test_cases, "unlabelled_pool_from_training": pool,
                                     "test_every": test_every, "unlabeled_every": unlabeled_every}
(raw / "dataset.json").write_text(json.dumps(meta, indent=4) + "\n")
print(f"split: {meta['numTraining']} training cases, {len(test_cases)} test cases, {meta['numTest']} unlabelled "
      f"cases ({len(pool)} of them with hidden labels in {hidden})")
PY
}

# ------------------------------------------------------------------------------------------ the protocol
echo "reproduce_reduced.sh: SOURCE=$SOURCE WORK=$WORK trainers *$SFX, folds [$FOLDS], device $DEVICE"
convert_and_split() {   # one step: a failed split is redone from a fresh conversion
  nnunet-kd convert-brats "$SOURCE" -d "$DATASET_ID" -n "$NAME" --num-processes "$NUM_PROCESSES" --overwrite
  rm -rf "$WORK/test_set" "$WORK/heldout_pool_labels"
  split_dataset
}
step convert_split convert_and_split
step preprocess planning nnUNetv2_plan_and_preprocess -d "$DATASET_ID" -c 3d_fullres -np "$NUM_PROCESSES" \
  -npfp "$NUM_PROCESSES" --verify_dataset_integrity
step select_student_modalities nnunet-kd select-modalities "$TEST_IMAGES" "$TEST_STUDENT_IMAGES" --keep T1ce,FLAIR \
  --dataset-json "$nnUNet_raw/$DS/dataset.json"

RUNS=()
if ! skipped teacher; then    # stock nnU-Net on all 4 modalities: the teacher-only / full-modality reference
  train "$DATASET_ID" "$TEACHER"; predict teacher_4ch "$DATASET_ID" "$TEACHER" "$TEST_IMAGES"; RUNS+=(teacher_4ch)
fi
if ! skipped student; then    # the same student (T1ce + FLAIR) without teacher
  train "$DATASET_ID" "$STUDENT"; predict student_only "$DATASET_ID" "$STUDENT" "$TEST_STUDENT_IMAGES"
  RUNS+=(student_only)
fi
if ! skipped kd; then         # seed 000: teacher and student together, Barlow Twins
  train "$DATASET_ID" "$KD"; predict barlow_kd "$DATASET_ID" "$KD" "$TEST_STUDENT_IMAGES"; RUNS+=(barlow_kd)
fi
if ! skipped architectures; then   # seed 001: stand-alone models, ensemble, pseudo-labels, distilled model
  MODELS=()
  for ARCH in $ARCHITECTURES; do
    train "$DATASET_ID" "nnUNetTrainer$ARCH$SFX"
    predict "arch_$ARCH" "$DATASET_ID" "nnUNetTrainer$ARCH$SFX" "$TEST_IMAGES"; RUNS+=("arch_$ARCH")
    MODELS+=("$(model_dir "$DS" "nnUNetTrainer$ARCH$SFX")")
  done
  step ensemble_test nnunet-kd pseudolabel -i "$TEST_IMAGES" -o "$WORK/pred/ensemble_members" --models "${MODELS[@]}" \
    --min-foreground-voxels 0 "${PSEUDO_OPTS[@]}"
  [ "$DRY_RUN" = 1 ] || [ -e "$WORK/pred/ensemble" ] || ln -s "$WORK/pred/ensemble_members/labels" "$WORK/pred/ensemble"
  RUNS+=(ensemble)
  if ! skipped distill; then
    [ "$DRY_RUN" = 1 ] || [ -n "$(ls -A "$UNLABELED" 2>/dev/null)" ] || die "no unlabelled cases in $UNLABELED: set UNLABELED_EVERY, \
add a release without labels to SOURCE, or SKIP=distill"
    # per-fold pseudo-labels (members of fold F only): the distilled model's fold F never learns from a teacher
    # that trained on fold F's validation cases
    PSEUDO_DIRS=()
    for F in $FOLDS; do
      step "pseudolabel_fold$F" nnunet-kd pseudolabel -i "$UNLABELED" -o "$WORK/pseudolabels/fold_$F" \
        --models "${MODELS[@]}" --fold "$F" --save-probabilities "${PSEUDO_OPTS[@]}"
      PSEUDO_DIRS+=("$WORK/pseudolabels/fold_$F")
    done
    EMPTY=(); [ "$INCLUDE_EMPTY" = 1 ] && EMPTY=(--include-empty)
    step distill_dataset nnunet-kd make-distill-dataset -s "$DATASET_ID" -p "${PSEUDO_DIRS[@]}" -d "$DISTILL_ID" \
      -n "${NAME}Distill" --overwrite "${EMPTY[@]}"
    step distill_plans planning nnUNetv2_plan_and_preprocess -d "$DISTILL_ID" --no_pp -np "$NUM_PROCESSES" \
      -npfp "$NUM_PROCESSES"
    step distill_move_plans nnUNetv2_move_plans_between_datasets -s "$DATASET_ID" -t "$DISTILL_ID" -sp nnUNetPlans \
      -tp nnUNetPlans
    step distill_preprocess nnUNetv2_preprocess -d "$DISTILL_ID" -c 3d_fullres -np "$NUM_PROCESSES"
    train "$DISTILL_ID" "$DISTILLED"
    predict distilled "$DISTILL_ID" "$DISTILLED" "$TEST_IMAGES"; RUNS+=(distilled)
  fi
fi
[ "${#RUNS[@]}" -gt 0 ] || die "SKIP=$SKIP leaves nothing to evaluate"

REPORT_RUNS=()
for run in "${RUNS[@]}"; do
  evaluate "$run" "$WORK/pred/$run"
  REPORT_RUNS+=("$run=$WORK/eval/$run")
done
rm -f "$WORK/.done/report"   # the report always shows every run evaluated so far
step report nnunet-kd report "${REPORT_RUNS[@]}" -o "$WORK/report" --images "$TEST_IMAGES" --overwrite
if [ "$DRY_RUN" = 1 ]; then echo "reproduce_reduced.sh: dry run, nothing trained"; exit 0; fi

"$PYTHON" - "$WORK" "${RUNS[@]}" <<'PY'
"""WORK/comparison.md: mean test-set Dice of every run next to the published numbers (see docs/reproduce.md)."""
import json
import sys
from pathlib import Path

work, runs = Path(sys.argv[1]), sys.argv[2:]
published = {  # (source, ET, TC, WT) in Dice x 100
    "teacher_4ch": ("nnU-Net, BraTS 2020 test set (Isensee et al. 2020)", 82.03, 85.06, 88.95),
    "barlow_kd": ("seed 000 student T1ce+FLAIR (Choi et al. 2023)", 89.70, 91.11, 92.20),
    "arch_UNet": ("seed 001 UNet", 71.871, 81.343, 84.591),
    "arch_ResidualUNet": ("seed 001 Residual UNet", 72.585, 80.872, 86.415),
    "arch_CascadedUNet": ("seed 001 Cascaded UNet", 72.197, 81.129, 85.654),
    "ensemble": ("seed 001 ensemble", 74.916, 81.733, 87.682),
    "distilled": ("seed 001 distilled model", 75.187, 82.661, 87.074),
}
rows = ["| run | cases | ET | TC | WT | published ET / TC / WT | published by |", "|---|---|---|---|---|---|---|"]
for run in runs:
    summary = json.loads((work / "eval" / run / "summary.json").read_text())
    ours = [100 * summary["metrics"][r]["dice"]["mean"] for r in ("ET", "TC", "WT")]
    source, *pub = published.get(run, ("-", None, None, None))
    pub_text = " / ".join(f"{v:.2f}" for v in pub) if pub[0] is not None else "-"
    rows.append(f"| {run} | {summary['num_cases']} | " + " | ".join(f"{v:.2f}" for v in ours) +
                f" | {pub_text} | {source} |")
text = ("# Test-set Dice (mean over cases, x100) next to the published numbers\n\n"
        "Protocols differ (data split, epochs, folds, test set): read docs/reproduce.md before comparing.\n\n"
        + "\n".join(rows) + "\n")
(work / "comparison.md").write_text(text)
print(text)
PY
echo "reproduce_reduced.sh: done. Report: $WORK/report/report.md; table: $WORK/comparison.md; times: $TIMINGS"
