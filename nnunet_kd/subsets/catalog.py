"""The 15 non-empty subsets of the four BraTS modalities: names, parsing, and random sampling for training.

A subset is a tuple of canonical modality names in channel order (``("T1ce", "FLAIR")``) and is named by joining
them with ``+`` (``"T1ce+FLAIR"``), as in the missing-modality literature's tables (RFNet, mmFormer, DeMoSeg).

Public: :func:`all_subsets`, :func:`subset_name`, :func:`parse_subset`, :func:`parse_subsets`,
:class:`SubsetSampler` (one random non-empty subset per training sample, uniform or weighted) and
:func:`zero_missing_channels`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

from nnunet_kd.brats import MODALITIES, UnknownModalityError, canonical_modality, parse_modality_list
from nnunet_kd.errors import ConfigurationError

#: Separator of modality names in a subset's name.
SEPARATOR = "+"


def all_subsets(modalities: Sequence[str] = MODALITIES) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``modalities``: singles first, then pairs, ..., the full set last.

    Within one size the order follows ``modalities`` (channel order): ``T1``, ``T1ce``, ``T2``, ``FLAIR``,
    ``T1+T1ce``, ... ``T1+T1ce+T2+FLAIR`` (15 subsets for the four BraTS modalities).
    """
    modalities = tuple(modalities)
    return [combo for size in range(1, len(modalities) + 1) for combo in itertools.combinations(modalities, size)]


def subset_name(subset: Iterable[str]) -> str:
    """``("T1ce", "FLAIR")`` -> ``"T1ce+FLAIR"``."""
    return SEPARATOR.join(subset)


def parse_subset(text: str | Iterable[str]) -> tuple[str, ...]:
    """Canonical modalities, in channel order, of a subset written ``"T2,FLAIR"``, ``"T2+FLAIR"`` or ``"flair+t2"``.

    Raises :class:`ConfigurationError` for an empty subset or an unknown modality name.
    """
    if isinstance(text, str):
        items = [t for t in text.replace(SEPARATOR, ",").split(",") if t.strip()]
    else:
        items = [t for t in text if t.strip()]
    if not items:
        raise ConfigurationError(f"empty modality subset {text!r}: keep at least one of {', '.join(MODALITIES)}")
    try:
        return parse_modality_list(items)
    except UnknownModalityError as e:
        raise ConfigurationError(f"modality subset {text!r}: {e}") from None


def parse_subsets(texts: Iterable[str] | None) -> list[tuple[str, ...]]:
    """Subsets from the command line (each ``"T2,FLAIR"`` or ``"T2+FLAIR"``), or all 15 for ``None`` / ``["all"]``.

    Duplicates are dropped and the result is in the order of :func:`all_subsets`.
    """
    texts = list(texts or [])
    if not texts or [t.strip().lower() for t in texts] == ["all"]:
        return all_subsets()
    wanted = {parse_subset(t) for t in texts}
    return [s for s in all_subsets() if s in wanted]


class SubsetSampler:
    """Draws, per sample, one non-empty subset of a model's channels, uniformly or with per-subset weights.

    ``channel_names`` are the model's input channels in order (any spelling of the BraTS modalities; subsets keep
    that order). ``weights`` maps subset names (any spelling accepted by :func:`parse_subset`) to non-negative
    weights; subsets not named get weight 0. ``None`` means uniform over all ``2**C - 1`` subsets. :meth:`sample`
    returns a boolean keep-mask (samples x channels).
    """

    def __init__(self, channel_names: Sequence[str], weights: Mapping[str, float] | None = None):
        try:
            self.channel_names: tuple[str, ...] = tuple(canonical_modality(n) for n in channel_names)
        except UnknownModalityError as e:
            raise ConfigurationError(f"channels {list(channel_names)}: {e}") from None
        if not self.channel_names or len(set(self.channel_names)) != len(self.channel_names):
            raise ConfigurationError(f"channels {list(channel_names)}: need distinct modalities")
        self.subsets: list[tuple[str, ...]] = all_subsets(self.channel_names)
        if weights is None:
            probabilities = [1.0] * len(self.subsets)
        else:
            by_subset: dict[frozenset[str], float] = {}
            for key, value in weights.items():
                subset = frozenset(parse_subset(key))
                if not subset <= set(self.channel_names):
                    raise ConfigurationError(f"subset weight for {key!r}: not a subset of the channels "
                                             f"{subset_name(self.channel_names)}")
                if not value >= 0:
                    raise ConfigurationError(f"subset weight for {key!r} must be >= 0, got {value}")
                by_subset[subset] = float(value)
            probabilities = [by_subset.get(frozenset(s), 0.0) for s in self.subsets]
        total = sum(probabilities)
        if total <= 0:
            raise ConfigurationError("subset weights are all zero: give at least one subset a positive weight")
        self.probabilities: tuple[float, ...] = tuple(p / total for p in probabilities)
        self._masks = [[m in s for m in self.channel_names] for s in self.subsets]

    @property
    def names(self) -> list[str]:
        """Names of the subsets, in the order of :attr:`probabilities`."""
        return [subset_name(s) for s in self.subsets]

    def sample_indices(self, n: int, generator=None):
        """``n`` subset indices into :attr:`subsets` (a LongTensor), drawn with replacement."""
        import torch

        probabilities = torch.tensor(self.probabilities, dtype=torch.float64)
        return torch.multinomial(probabilities, n, replacement=True, generator=generator)

    def sample(self, n: int, generator=None, device=None):
        """Keep-masks of ``n`` random subsets: a bool tensor (n, channels), every row with at least one True."""
        import torch

        masks = torch.tensor(self._masks, dtype=torch.bool)
        return masks[self.sample_indices(n, generator)].to(device)


def zero_missing_channels(data, keep):
    """``data`` (B, C, ...) with channel ``c`` of sample ``b`` set to 0 where ``keep[b, c]`` is False.

    Applied to normalised network input, 0 is each channel's normalised mean (z-score) -- the usual "missing
    modality" input of RFNet / mmFormer style models.
    """
    import torch

    if tuple(keep.shape) != tuple(data.shape[:2]):
        raise ValueError(f"keep-mask of shape {tuple(keep.shape)} does not match data of shape {tuple(data.shape)}")
    mask = keep.to(device=data.device, dtype=torch.bool).reshape(*keep.shape, *([1] * (data.ndim - 2)))
    return data.masked_fill(~mask, 0)
