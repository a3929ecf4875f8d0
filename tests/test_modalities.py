"""Channel subsets by name and the reduced dataset.json / plans of a student model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunet_kd.brats import make_dataset_json
from nnunet_kd.errors import ConfigurationError
from nnunet_kd.subsets.modalities import (
    WrongInputChannelsError,
    attach_input_channel_check,
    recorded_subset,
    resolve_channels,
    student_dataset_json,
    student_plans,
)

CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}


def test_resolve_keeps_ascending_channel_order_whatever_the_request_order():
    subset = resolve_channels(CHANNELS, ["FLAIR", "T1ce"])
    assert subset.indices == (1, 3)
    assert subset.names == ("T1ce", "FLAIR")
    assert subset.suffixes == ("_0001", "_0003")
    assert subset.describe() == "T1ce (_0001), FLAIR (_0003)"


def test_resolve_accepts_release_aliases_and_custom_spellings():
    assert resolve_channels(CHANNELS, ["t2f", "t1c"]).indices == (1, 3)
    msd_names = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert resolve_channels(msd_names, ["T1ce", "T2"]).indices == (2, 3)


@pytest.mark.parametrize("request_", [["PET"], [], ["T1", "DWI"]])
def test_resolve_rejects_unknown_or_empty(request_):
    with pytest.raises(ConfigurationError):
        resolve_channels(CHANNELS, request_)


def test_resolve_rejects_modality_absent_from_dataset():
    with pytest.raises(ConfigurationError, match="not a channel of this dataset"):
        resolve_channels({"0": "T1", "1": "FLAIR"}, ["T2"])


def test_student_dataset_json_renumbers_channels_and_records_subset():
    full = make_dataset_json(10, "X")
    subset = resolve_channels(full["channel_names"], ["FLAIR", "T1ce"])
    reduced = student_dataset_json(full, subset)
    assert reduced["channel_names"] == {"0": "T1ce", "1": "FLAIR"}
    assert reduced["labels"] == full["labels"] and reduced["regions_class_order"] == [1, 2, 3]
    assert recorded_subset(reduced) == subset
    assert full["channel_names"] == CHANNELS  # input untouched


def _plans() -> dict:
    props = {str(i): {"mean": float(i), "std": 1.0} for i in range(4)}
    config = {"normalization_schemes": ["A0", "A1", "A2", "A3"], "use_mask_for_norm": [False, True, False, True]}
    return {"foreground_intensity_properties_per_channel": props, "configurations": {"3d_fullres": config}}


def test_student_plans_put_student_channels_first():
    subset = resolve_channels(CHANNELS, ["T1ce", "FLAIR"])
    reduced = student_plans(_plans(), subset)
    config = reduced["configurations"]["3d_fullres"]
    assert config["normalization_schemes"] == ["A1", "A3", "A0", "A2"]
    assert config["use_mask_for_norm"] == [True, True, False, False]
    means = [reduced["foreground_intensity_properties_per_channel"][str(i)]["mean"] for i in range(4)]
    assert means == [1.0, 3.0, 0.0, 2.0]
    assert recorded_subset(reduced) == subset
    assert _plans()["configurations"]["3d_fullres"]["normalization_schemes"][0] == "A0"


def test_input_channel_check_names_expected_files():
    net = attach_input_channel_check(nn.Conv3d(2, 1, 1), 2, "T1ce (_0001), FLAIR (_0003)")
    assert net(torch.zeros(1, 2, 2, 2, 2)).shape == (1, 1, 2, 2, 2)
    with pytest.raises(WrongInputChannelsError, match=r"expects 2 input file\(s\) per case: T1ce \(_0001\), FLAIR"):
        net(torch.zeros(1, 4, 2, 2, 2))
    assert set(net.state_dict()) == {"weight", "bias"}  # the check does not change the weights' names
