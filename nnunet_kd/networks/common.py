"""Pieces shared by the seed-001 networks: U-Net geometry from nnU-Net plans, GroupNorm, an interpolating decoder.

* :class:`UNetSpec` is the geometry nnU-Net plans for a configuration (stages, features, kernel sizes, strides,
  patch size). :meth:`UNetSpec.from_configuration` reads it from a ``ConfigurationManager`` (training and
  ``nnUNetv2_predict`` both go through it); :func:`spec_for_patch` plans it like nnU-Net's default planner for a
  patch size and spacing without a dataset (tests, benchmarks).
* :class:`GroupNorm` is ``nn.GroupNorm`` with the ``(num_channels, **kwargs)`` signature that
  ``dynamic_network_architectures`` building blocks expect of a ``norm_op``.
* :class:`InterpolatingDecoder` is a U-Net decoder that upsamples by (tri)linear interpolation, concatenates the
  skips and has one segmentation head per stage (deep supervision as in nnU-Net: a list of
  outputs, highest resolution first, or a single tensor when ``deep_supervision`` is False).
* :class:`RefusesEarlierLayout` makes a network whose layout changed refuse a checkpoint of its earlier layout
  with one line (retrain) instead of PyTorch's list of missing and unexpected keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from dynamic_network_architectures.building_blocks.helper import convert_dim_to_conv_op
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from torch import nn
from torch.nn import functional as F

from nnunet_kd.errors import ConfigurationError

#: nnU-Net's default planner: features double from 32 per stage up to 320 (3D).
BASE_FEATURES = 32
MAX_FEATURES_3D = 320
MAX_FEATURES_2D = 512
#: nnU-Net's default planner stops downsampling an axis below this bottleneck edge length.
MIN_FEATURE_MAP_EDGE = 4


def _tuple_of_tuples(values: Sequence[Sequence[int]] | Sequence[int], dim: int, n: int) -> tuple[tuple[int, ...], ...]:
    out = []
    for v in values:
        out.append(tuple(int(i) for i in v) if isinstance(v, (list, tuple)) else (int(v),) * dim)
    if len(out) != n:
        raise ValueError(f"expected {n} entries, got {len(out)}: {values}")
    return tuple(out)


@dataclass(frozen=True)
class UNetSpec:
    """Geometry of a U-Net, as nnU-Net plans it for one configuration.

    ``strides[0]`` is the stride of the first stage (normally all ones); the spatial size at stage ``s`` is the
    patch size divided by the product of ``strides[:s + 1]``.
    """

    patch_size: tuple[int, ...]
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    n_conv_per_stage: tuple[int, ...]
    n_conv_per_stage_decoder: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.features_per_stage)
        if not (len(self.kernel_sizes) == len(self.strides) == len(self.n_conv_per_stage) == n):
            raise ValueError("features_per_stage, kernel_sizes, strides and n_conv_per_stage need one entry per stage")
        if len(self.n_conv_per_stage_decoder) != n - 1:
            raise ValueError("n_conv_per_stage_decoder needs one entry per decoder stage (n_stages - 1)")
        if any(len(k) != self.dim or len(s) != self.dim for k, s in zip(self.kernel_sizes, self.strides)):
            raise ValueError(f"kernel sizes and strides must have {self.dim} entries (the patch dimension)")

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)

    @property
    def dim(self) -> int:
        return len(self.patch_size)

    @property
    def conv_op(self) -> type[nn.Module]:
        return convert_dim_to_conv_op(self.dim)

    def stage_sizes(self, input_size: Sequence[int] | None = None) -> list[tuple[int, ...]]:
        """Spatial size of every stage's output for ``input_size`` (default: the planned patch size)."""
        size = [int(i) for i in (input_size if input_size is not None else self.patch_size)]
        sizes = []
        for stride in self.strides:
            size = [i // s for i, s in zip(size, stride)]
            sizes.append(tuple(size))
        return sizes

    @property
    def divisor(self) -> tuple[int, ...]:
        """Every input edge must be a multiple of this (product of all strides per axis)."""
        return tuple(math.prod(s[d] for s in self.strides) for d in range(self.dim))

    @classmethod
    def from_arch_kwargs(cls, patch_size: Sequence[int], arch_kwargs: dict[str, Any]) -> UNetSpec:
        """Spec from the ``arch_kwargs`` of a plans configuration (PlainConvUNet or ResEnc plans)."""
        dim = len(patch_size)
        n = int(arch_kwargs["n_stages"])
        features = arch_kwargs["features_per_stage"]
        features = [int(features)] * n if isinstance(features, int) else [int(f) for f in features]
        enc = arch_kwargs.get("n_conv_per_stage", arch_kwargs.get("n_blocks_per_stage", 2))
        enc = [int(enc)] * n if isinstance(enc, int) else [int(e) for e in enc]
        dec = arch_kwargs.get("n_conv_per_stage_decoder", 2)
        dec = [int(dec)] * (n - 1) if isinstance(dec, int) else [int(d) for d in dec]
        kernels = arch_kwargs["kernel_sizes"]
        strides = arch_kwargs["strides"]
        return cls(
            patch_size=tuple(int(p) for p in patch_size),
            features_per_stage=tuple(features),
            kernel_sizes=_tuple_of_tuples(kernels if not isinstance(kernels, int) else [kernels] * n, dim, n),
            strides=_tuple_of_tuples(strides if not isinstance(strides, int) else [strides] * n, dim, n),
            n_conv_per_stage=tuple(enc),
            n_conv_per_stage_decoder=tuple(dec),
        )

    @classmethod
    def from_configuration(cls, configuration_manager: Any) -> UNetSpec:
        """Spec of an nnU-Net ``ConfigurationManager`` (``plans_manager.get_configuration(name)``)."""
        return cls.from_arch_kwargs(configuration_manager.patch_size, configuration_manager.network_arch_init_kwargs)


def spec_for_patch(patch_size: Sequence[int], spacing: Sequence[float] | None = None,
                   max_features: int | None = None) -> UNetSpec:
    """The topology nnU-Net's default planner gives ``patch_size`` at ``spacing`` (default isotropic 1 mm).

    The patch size may be padded up to a multiple of the total downsampling, exactly as nnU-Net does; read the
    result's ``patch_size``.
    """
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    dim = len(patch_size)
    spacing = tuple(spacing) if spacing is not None else (1.0,) * dim
    _, strides, kernels, padded, _ = get_pool_and_conv_props(spacing, list(patch_size), MIN_FEATURE_MAP_EDGE, 999999)
    n = len(strides)
    max_features = max_features or (MAX_FEATURES_3D if dim == 3 else MAX_FEATURES_2D)
    return UNetSpec(
        patch_size=tuple(int(p) for p in padded),
        features_per_stage=tuple(min(max_features, BASE_FEATURES * 2 ** i) for i in range(n)),
        kernel_sizes=_tuple_of_tuples(kernels, dim, n),
        strides=_tuple_of_tuples(strides, dim, n),
        n_conv_per_stage=(2,) * n,
        n_conv_per_stage_decoder=(2,) * (n - 1),
    )


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm(num_groups, num_channels)`` taking ``num_channels`` first, as a building-block ``norm_op``.

    The number of groups is reduced to a divisor of ``num_channels`` when needed (8 groups on 4 channels -> 4).
    """

    def __init__(self, num_channels: int, num_groups: int = 8, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(math.gcd(int(num_groups), int(num_channels)), int(num_channels), eps=eps, affine=affine)


def interpolation_mode(dim: int) -> str:
    """``trilinear`` for 3D, ``bilinear`` for 2D."""
    return {1: "linear", 2: "bilinear", 3: "trilinear"}[dim]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of (shared parameters counted once) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def network_config(norm: str, nonlin: str, dim: int) -> dict[str, Any]:
    """Building-block keyword arguments for a normalisation (``instance``/``group``) and non-linearity."""
    from dynamic_network_architectures.building_blocks.helper import get_matching_instancenorm

    norms: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
        "instance": (get_matching_instancenorm(dimension=dim), {"eps": 1e-5, "affine": True}),
        "group": (GroupNorm, {"num_groups": 8, "eps": 1e-5, "affine": True}),
    }
    nonlins: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
        "relu": (nn.ReLU, {"inplace": True}),
        "leakyrelu": (nn.LeakyReLU, {"negative_slope": 1e-2, "inplace": True}),
    }
    norm_op, norm_kwargs = norms[norm]
    nonlin_op, nonlin_kwargs = nonlins[nonlin]
    return {"norm_op": norm_op, "norm_op_kwargs": dict(norm_kwargs), "nonlin": nonlin_op,
            "nonlin_kwargs": dict(nonlin_kwargs)}


class InterpolatingDecoder(nn.Module):
    """U-Net decoder: 1x1 conv to the skip's width, (tri)linear upsampling, concatenation with the skip, conv blocks.

    The decoder of Isensee et al. 2018 (:mod:`nnunet_kd.networks.unet`), with plain conv blocks
    (``StackedConvBlocks``). Every stage has a 1x1 segmentation head so that a checkpoint trained with deep
    supervision loads into the inference network; ``deep_supervision`` decides what ``forward`` returns.
    """

    def __init__(self, spec: UNetSpec, encoder_channels: Sequence[int], num_classes: int,
                 n_blocks_per_stage: Sequence[int], deep_supervision: bool,
                 norm_op: type[nn.Module], norm_op_kwargs: dict, nonlin: type[nn.Module], nonlin_kwargs: dict,
                 conv_bias: bool = False) -> None:
        super().__init__()
        n = len(encoder_channels)
        if len(n_blocks_per_stage) != n - 1:
            raise ValueError("n_blocks_per_stage needs one entry per decoder stage (n_stages - 1)")
        self.deep_supervision = deep_supervision
        self.mode = interpolation_mode(spec.dim)
        conv_op = spec.conv_op
        self.reduce = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.seg_layers = nn.ModuleList()
        for s in range(1, n):
            below, skip = encoder_channels[-s], encoder_channels[-(s + 1)]
            self.reduce.append(conv_op(below, skip, 1, 1, 0, bias=conv_bias))
            self.stages.append(StackedConvBlocks(
                num_convs=n_blocks_per_stage[s - 1], conv_op=conv_op, input_channels=2 * skip, output_channels=skip,
                kernel_size=spec.kernel_sizes[-(s + 1)], initial_stride=1, conv_bias=conv_bias, norm_op=norm_op,
                norm_op_kwargs=norm_op_kwargs, dropout_op=None, dropout_op_kwargs=None, nonlin=nonlin,
                nonlin_kwargs=nonlin_kwargs))
            self.seg_layers.append(conv_op(skip, num_classes, 1, 1, 0, bias=True))

    def upsample(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return F.interpolate(x, size=tuple(size), mode=self.mode, align_corners=False)

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """``skips`` in encoder order (bottleneck last); returns outputs highest resolution first."""
        x = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for s, (reduce, stage) in enumerate(zip(self.reduce, self.stages)):
            skip = skips[-(s + 2)]
            x = self.upsample(reduce(x), skip.shape[2:])
            x = torch.cat((x, skip), 1)
            x = stage(x)
            if self.deep_supervision or s == last:
                outputs.append(self.seg_layers[s](x))
        outputs = outputs[::-1]
        return outputs if self.deep_supervision else outputs[0]


class RefusesEarlierLayout(nn.Module):
    """A network that an earlier nnunet-kd version built with another layout: its checkpoints cannot load.

    Every nnU-Net load path ends in the plain network's ``load_state_dict`` (``nnUNetTrainer.load_checkpoint``
    for ``--c``/``--val``, ``nnUNetPredictor`` for ``nnUNetv2_predict`` and ``nnunet-kd predict``), so the check
    is made here rather than in a trainer, which the predictor never calls. A subclass names a key prefix that only the earlier layout has
    (:attr:`earlier_layout_prefix`) and says what that layout was (:attr:`earlier_layout`); a state dict with
    such keys raises :class:`~nnunet_kd.errors.ConfigurationError` (one line). Any other mismatch keeps PyTorch's
    own error.
    """

    earlier_layout_prefix: str = ""
    earlier_layout: str = ""

    def load_state_dict(self, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        prefix = self.earlier_layout_prefix
        if prefix and any(k.startswith(prefix) for k in state_dict) and \
                not any(k.startswith(prefix) for k in self.state_dict()):
            name = type(self).__name__
            raise ConfigurationError(f"this checkpoint holds a {name} of the earlier architecture ({self.earlier_layout}); "
                                     f"its weights do not fit the current {name}: retrain the model with this version "
                                     f"of nnunet-kd")
        return super().load_state_dict(state_dict, *args, **kwargs)


def init_weights_he(module: nn.Module) -> None:
    """nnU-Net's He initialisation (negative slope 1e-2) for every conv of ``module``."""
    from dynamic_network_architectures.initialization.weight_init import InitWeights_He

    module.apply(InitWeights_He(1e-2))
