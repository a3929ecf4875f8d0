"""One student for all 15 modality subsets: subset naming/sampling, and nnUNetTrainerBarlowKD_AnySubset (CPU)."""

from __future__ import annotations

import collections
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from test_kd_trainer import barlow_upper_bound

from conftest import BIN, NnunetEnv
from nnunet_kd.errors import ConfigurationError
from nnunet_kd.subsets.catalog import (
    SubsetSampler,
    all_subsets,
    parse_subset,
    parse_subsets,
    subset_name,
    zero_missing_channels,
)

ANY_SUBSET = "nnUNetTrainerBarlowKD_AnySubset_smoke"
FIRST_CONV = "encoder.stages.0.0.convs.0.conv.weight"


# --------------------------------------------------------------------------------------------- subsets


def test_the_15_subsets_in_table_order():
    subsets = all_subsets()
    assert len(subsets) == len(set(subsets)) == 15
    assert all(subsets)
    assert [subset_name(s) for s in subsets[:5]] == ["T1", "T1ce", "T2", "FLAIR", "T1+T1ce"]
    assert subset_name(subsets[-1]) == "T1+T1ce+T2+FLAIR"
    assert [len(s) for s in subsets] == sorted(len(s) for s in subsets)


def test_parse_subset_spellings_and_errors():
    assert parse_subset("T2,FLAIR") == parse_subset("flair+t2") == parse_subset(["T2", "t2f"]) == ("T2", "FLAIR")
    assert parse_subset("t1c") == ("T1ce",)
    with pytest.raises(ConfigurationError, match="empty modality subset"):
        parse_subset(" , ")
    with pytest.raises(ConfigurationError, match="unknown modality 'T3'"):
        parse_subset("T2,T3")
    assert len(parse_subsets(None)) == len(parse_subsets(["all"])) == 15
    assert parse_subsets(["FLAIR+T1ce", "t1c,flair", "T1"]) == [("T1",), ("T1ce", "FLAIR")]


def test_uniform_sampling_covers_all_15_subsets_and_never_an_empty_one():
    sampler = SubsetSampler(["T1", "T1ce", "T2", "FLAIR"])
    masks = sampler.sample(6000, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (6000, 4) and masks.dtype == torch.bool
    assert masks.any(1).all(), "an empty subset was drawn"
    counts = collections.Counter(tuple(row) for row in masks.tolist())
    assert len(counts) == 15
    assert all(250 < c < 550 for c in counts.values()), counts  # 400 expected each


def test_weighted_sampling_draws_only_named_subsets_in_proportion():
    sampler = SubsetSampler(["T1", "T1ce", "T2", "FLAIR"], {"T1ce+FLAIR": 3, "flair": 1})
    assert sampler.probabilities[sampler.names.index("T1ce+FLAIR")] == pytest.approx(0.75)
    masks = sampler.sample(4000, generator=torch.Generator().manual_seed(1))
    counts = collections.Counter(tuple(row) for row in masks.tolist())
    assert set(counts) == {(False, True, False, True), (False, False, False, True)}
    assert 2.6 < counts[(False, True, False, True)] / counts[(False, False, False, True)] < 3.4


def test_sampler_masks_follow_the_model_channel_order():
    sampler = SubsetSampler(["FLAIR", "T1"], {"T1": 1})
    assert sampler.sample(5).tolist() == [[False, True]] * 5


@pytest.mark.parametrize("weights, message", [({"T1+T3": 1}, "unknown modality"), ({"T1": -1}, ">= 0"),
                                               ({"T1": 0}, "all zero")])
def test_sampler_refuses_bad_weights(weights, message):
    with pytest.raises(ConfigurationError, match=message):
        SubsetSampler(["T1", "T1ce", "T2", "FLAIR"], weights)
    with pytest.raises(ConfigurationError, match="not a subset of the channels"):
        SubsetSampler(["T2", "FLAIR"], {"T1": 1})


def test_zero_missing_channels_zeros_exactly_the_dropped_channels():
    data = torch.randn(3, 4, 5, 5, 5)
    keep = torch.tensor([[True, False, False, True], [False, False, True, False], [True, True, True, True]])
    out = zero_missing_channels(data, keep)
    for b in range(3):
        for c in range(4):
            assert torch.equal(out[b, c], data[b, c] if keep[b, c] else torch.zeros_like(data[b, c]))
    with pytest.raises(ValueError, match="does not match"):
        zero_missing_channels(data, keep[:, :2])


# --------------------------------------------------------------------------------------------- trainer


def train(env: NnunetEnv, trainer: str, *extra: str) -> subprocess.CompletedProcess:
    return env.run(str(BIN / "nnUNetv2_train"), str(env.dataset_id), "3d_fullres", "0", "-tr", trainer,
                   "-device", "cpu", *extra)


def trained(env: NnunetEnv, trainer: str) -> Path:
    """The model folder of ``trainer`` in this session's tree, trained once (shared with test_subset_export)."""
    folder = env.model_folder(trainer)
    if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
        train(env, trainer)
    return folder


@pytest.mark.slow
def test_nnunetv2_train_any_subset_smoke(nnunet_env: NnunetEnv):
    folder = trained(nnunet_env, ANY_SUBSET)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert len(dataset_json["channel_names"]) == 4
    record = dataset_json["nnunet_kd"]["any_subset"]
    assert len(record["subsets"]) == 15 and sum(record["probabilities"]) == pytest.approx(1)
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == ANY_SUBSET
    assert ckpt["network_weights"][FIRST_CONV].shape[1] == 4
    assert ckpt["nnunet_kd"]["kd_modules"][f"teacher.{FIRST_CONV}"].shape[1] == 4
    assert all(0 < v <= barlow_upper_bound() for v in ckpt["logging"]["barlow_loss"])
    assert (folder / "fold_0" / "validation" / "summary.json").is_file()
    log = next((folder / "fold_0").glob("training_log_*.txt")).read_text()
    assert "any-subset student" in log


@pytest.mark.slow
def test_train_step_zeroes_dropped_channels_of_the_normalised_batch(nnunet_env: NnunetEnv, monkeypatch):
    """The batch train_step feeds the student is the loader's batch with exactly the sampled subset's channels zeroed.

    The keep-masks are taken from the trainer's sampler as it draws them (a spy), the network input from a forward
    pre-hook, and the expected input is computed independently with numpy from the loader's batch and those masks.
    """
    trainer = nnunet_env.make_trainer("nnUNetTrainerBarlowKD_AnySubset_PixelKD", monkeypatch)
    trainer.initialize()
    dl_train, _ = trainer.get_dataloaders()
    batch = next(dl_train)  # what nnU-Net's training loop hands to train_step: preprocessed + augmented
    data = batch["data"].clone()
    assert data.shape[1] == 4
    assert data.min() < 0  # z-score normalised (raw MR intensities are >= 0)
    assert data.flatten(2).ne(0).any(-1).all()  # every channel holds data before zeroing: a zeroed one is visible
    drawn: list[torch.Tensor] = []
    real_sample = trainer.subset_sampler.sample

    def spy(*args, **kwargs):
        keep = real_sample(*args, **kwargs)
        drawn.append(keep.clone())
        return keep

    monkeypatch.setattr(trainer.subset_sampler, "sample", spy)
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
    trainer.network.register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].detach().clone()))
    trainer.kd_modules["teacher"].register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].detach().clone()))
    torch.manual_seed(3)

    out = trainer.train_step(batch)

    assert len(drawn) == 1 and len(seen["student"]) == 1 and len(seen["teacher"]) == 1
    keep = drawn[0].cpu().numpy()
    assert keep.shape == (data.shape[0], 4) and keep.any(1).all(), "a sample lost all its channels"
    assert (~keep).any(), "no channel was dropped in this batch: the check below would not test zeroing"
    expected = data.numpy() * keep[:, :, None, None, None]  # independent of zero_missing_channels
    np.testing.assert_array_equal(seen["student"][0].cpu().numpy(), expected)
    np.testing.assert_array_equal(seen["teacher"][0].cpu().numpy(), data.numpy())  # the teacher sees all four
    assert set(out) == {"loss", "kd_total_loss", "student_seg_loss", "teacher_seg_loss", "barlow_loss", "pixel_kd_loss"}

    drawn.clear()
    outputs = [trainer.student_input(data) for _ in range(60)]
    masks = torch.cat(drawn).cpu().numpy()
    for keep, student in zip(drawn, outputs):
        np.testing.assert_array_equal(student.numpy(), data.numpy() * keep.cpu().numpy()[:, :, None, None, None])
    assert masks.any(1).all()
    assert len({tuple(m) for m in masks.tolist()}) >= 10  # many different subsets over 120 samples
