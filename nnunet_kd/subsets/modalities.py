"""Student channel subsets chosen by modality *name*, and the reduced dataset.json / plans of a student.

A student trained on, say, T1ce + FLAIR keeps those channels in ascending original order (``_0001``, ``_0003``)
and its model folder carries a dataset.json and plans.json that describe only those channels, so stock
``nnUNetv2_predict`` runs it on folders holding just those two files per case.

The reduced plans list the student channels' normalisation first, followed by the other channels'. nnU-Net
only reads the first *n* entries for a case with *n* files, so the extra entries are never used with correct
input; they let a case with the wrong number of files reach the network, whose input check
(:func:`attach_input_channel_check`) then says which files the model expects instead of nnU-Net failing with an
``IndexError`` deep inside preprocessing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from nnunet_kd.brats import canonical_modality, channel_suffix
from nnunet_kd.errors import ConfigurationError

#: Key under which dataset.json and plans.json of a student record the channel subset.
RECORD_KEY = "nnunet_kd"


@dataclass(frozen=True)
class ChannelSubset:
    """Channels of a model, as indices into the dataset's channels plus their names."""

    indices: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def suffixes(self) -> tuple[str, ...]:
        return tuple(channel_suffix(i) for i in self.indices)

    def describe(self) -> str:
        """``T1ce (_0001), FLAIR (_0003)``."""
        return ", ".join(f"{n} ({s})" for n, s in zip(self.names, self.suffixes))

    def as_record(self) -> dict:
        return {"channel_indices": list(self.indices), "channel_names": list(self.names),
                "file_suffixes": list(self.suffixes)}


def resolve_channels(channel_names: Mapping[str, str], requested: Iterable[str]) -> ChannelSubset:
    """Indices of the ``requested`` modalities in a dataset.json ``channel_names`` mapping.

    Names are matched through :func:`nnunet_kd.brats.canonical_modality` (``t1c`` finds ``T1ce``), the result is in
    ascending channel order whatever the order requested, and unknown or absent names raise
    :class:`ConfigurationError`.
    """
    requested = list(requested)
    if not requested:
        raise ConfigurationError("empty modality subset: name at least one modality")
    by_canonical: dict[str, int] = {}
    for key, name in channel_names.items():
        try:
            by_canonical[canonical_modality(name)] = int(key)
        except Exception:  # a non-BraTS channel name: only matchable by its exact spelling
            by_canonical[name] = int(key)
    indices = set()
    for name in requested:
        try:
            canon = canonical_modality(name)
        except Exception:
            canon = name
        if canon not in by_canonical:
            available = ", ".join(f"{v} (_{int(k):04d})" for k, v in sorted(channel_names.items(), key=lambda kv: int(kv[0])))
            raise ConfigurationError(f"modality '{name}' is not a channel of this dataset; channels: {available}")
        indices.add(by_canonical[canon])
    ordered = tuple(sorted(indices))
    return ChannelSubset(ordered, tuple(channel_names[str(i)] for i in ordered))


def student_dataset_json(dataset_json: Mapping, subset: ChannelSubset) -> dict:
    """dataset.json of a model that takes only ``subset``'s channels (renumbered 0..n-1)."""
    reduced = copy.deepcopy(dict(dataset_json))
    reduced["channel_names"] = {str(i): name for i, name in enumerate(subset.names)}
    reduced[RECORD_KEY] = {
        "student": subset.as_record(),
        "original_channel_names": dict(dataset_json["channel_names"]),
        "note": "nnunet-kd student model: give each case only the files listed in student.file_suffixes",
    }
    return reduced


def _channel_order(subset: ChannelSubset, n_channels: int) -> list[int]:
    rest = [i for i in range(n_channels) if i not in subset.indices]
    return list(subset.indices) + rest


def student_plans(plans: Mapping, subset: ChannelSubset) -> dict:
    """plans.json of a student: per-channel entries re-ordered so the student's channels come first.

    ``normalization_schemes`` / ``use_mask_for_norm`` of every configuration and
    ``foreground_intensity_properties_per_channel`` are re-keyed; see the module docstring for why the other
    channels' entries follow instead of being dropped.
    """
    reduced = copy.deepcopy(dict(plans))
    props = reduced.get("foreground_intensity_properties_per_channel", {})
    n_channels = len(props) if props else max(subset.indices) + 1
    order = _channel_order(subset, n_channels)
    if props:
        reduced["foreground_intensity_properties_per_channel"] = {str(new): props[str(old)]
                                                                  for new, old in enumerate(order)}
    for config in reduced.get("configurations", {}).values():
        for key in ("normalization_schemes", "use_mask_for_norm"):
            if key in config and len(config[key]) == n_channels:
                config[key] = [config[key][old] for old in order]
    reduced[RECORD_KEY] = {"student": subset.as_record()}
    return reduced


def recorded_subset(plans_or_dataset_json: Mapping) -> ChannelSubset | None:
    """The student subset recorded in a reduced plans/dataset.json, or None for an ordinary model."""
    record = plans_or_dataset_json.get(RECORD_KEY, {}).get("student")
    if not record:
        return None
    return ChannelSubset(tuple(record["channel_indices"]), tuple(record["channel_names"]))


class WrongInputChannelsError(RuntimeError):
    """A model was given a case with a different number of input files than it was trained on."""


def attach_input_channel_check(network, expected: int, description: Sequence[str] | str | None = None):
    """Make ``network`` refuse inputs whose channel count differs from ``expected``, with a readable message.

    A forward pre-hook, so the network's ``state_dict`` is unchanged. ``description`` names the expected files
    (e.g. ``"T1ce (_0001), FLAIR (_0003)"``).
    """
    what = description if isinstance(description, str) or description is None else ", ".join(description)

    def check(_module, args):
        x = args[0] if args else None
        if x is not None and hasattr(x, "shape") and x.ndim >= 2 and x.shape[1] != expected:
            files = f": {what}" if what else ""
            raise WrongInputChannelsError(
                f"this model expects {expected} input file(s) per case{files}; the case had {x.shape[1]}. "
                f"Give the input folder only those files per case (e.g. with `nnunet-kd select-modalities "
                f"IN OUT --keep {','.join(n.split(' ')[0] for n in (what or '').split(', ')) or 'NAMES'}`)."
            )

    network.register_forward_pre_hook(check)
    return network
