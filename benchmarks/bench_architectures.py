"""Parameter counts and training-step times of the seed-001 architectures vs stock nnU-Net on the same plans.

Every network is built by its trainer's ``build_network_architecture`` from a ``ConfigurationManager`` holding
what nnU-Net's default planner gives a patch size at 1 mm spacing (stages, widths 32..320, kernels, strides),
so all networks see identical plans. A "step" is what ``nnUNetTrainer.train_step`` does: forward,
nnU-Net's region loss (Dice + BCE, deep supervision, the trainer's weights; plus the VAE loss for the VAE
variant), backward, gradient clipping and an SGD step. Steps of all networks are interleaved round by round so
that load changes on a shared machine hit them alike; medians and ratios to ``nnUNetTrainer`` are reported.

    python -m benchmarks.bench_architectures                       # CPU: patch 48^3, batch 2
    python -m benchmarks.bench_architectures --device cuda --patch 128 128 128 --repeats 10

Parameter counts and the floating-point operations of one training step (forward + backward of the network,
counted by ``torch.utils.flop_counter`` on the ``meta`` device, so without computing anything and independent of
the machine's load) are also given for the BraTS plans of nnU-Net (patch 128^3, 6 stages, batch 2). Nothing here
asserts anything; it prints a Markdown table and can write JSON (``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

TRAINERS = {
    "nnUNetTrainer (stock PlainConvUNet)": "nnUNetTrainer",
    "UNet (Isensee 2018)": "nnUNetTrainerUNet",
    "ResidualUNet (Myronenko 2018)": "nnUNetTrainerResidualUNet",
    "ResidualUNet + VAE": "nnUNetTrainerResidualUNet_VAE",
    "CascadedUNet (Lachinov 2018)": "nnUNetTrainerCascadedUNet",
    "ModalityEncoderUNet": "nnUNetTrainerModalityEncoderUNet",
}


def configuration_for(patch: Sequence[int]):
    """nnU-Net ``ConfigurationManager`` with the default planner's PlainConvUNet topology for ``patch`` (1 mm)."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    from nnunet_kd.networks.common import spec_for_patch

    spec = spec_for_patch(patch)
    arch_kwargs = {
        "n_stages": spec.n_stages, "features_per_stage": list(spec.features_per_stage),
        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [list(k) for k in spec.kernel_sizes],
        "strides": [list(s) for s in spec.strides], "n_conv_per_stage": list(spec.n_conv_per_stage),
        "n_conv_per_stage_decoder": list(spec.n_conv_per_stage_decoder), "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    return ConfigurationManager({
        "patch_size": list(spec.patch_size), "batch_size": 2, "spacing": [1.0, 1.0, 1.0], "batch_dice": False,
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": arch_kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    })


def trainer_class(name: str):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_kd.trainers import architectures

    return nnUNetTrainer if name == "nnUNetTrainer" else getattr(architectures, name)


def build(name: str, config, deep_supervision: bool = True) -> torch.nn.Module:
    with contextlib.redirect_stdout(io.StringIO()):
        return trainer_class(name).build_network_architecture(None, config, 4, 3, deep_supervision)


def region_loss(config) -> torch.nn.Module:
    """The loss nnUNetTrainer._build_loss makes for region training (no compile, no DDP)."""
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_BCE_loss({}, {"batch_dice": False, "do_bg": True, "smooth": 1e-5, "ddp": False},
                           use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)
    n = len(config.pool_op_kernel_sizes) - 1
    weights = np.array([1 / 2 ** i for i in range(n)])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


def targets(config, batch: int, device: torch.device) -> list[torch.Tensor]:
    """Random region targets at every deep-supervision scale."""
    scales = np.cumprod(np.vstack(config.pool_op_kernel_sizes), axis=0)[:-1]
    out = []
    for s in scales:
        size = [p // int(f) for p, f in zip(config.patch_size, s)]
        out.append((torch.rand(batch, 3, *size, device=device) > 0.7).float())
    return out


def step_function(name: str, config, batch: int, device: torch.device) -> Callable[[], None]:
    from nnunet_kd.trainers.architectures import AuxiliaryLoss

    net = build(name, config).to(device).train()
    loss_fn: torch.nn.Module = region_loss(config)
    if getattr(net, "vae", None) is not None:
        loss_fn = AuxiliaryLoss(loss_fn, net.pop_auxiliary_loss)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    x = torch.randn(batch, 4, *config.patch_size, device=device)
    y = targets(config, batch, device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            loss = loss_fn(net(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def step_tflop(name: str, config, batch: int) -> float:
    """TFLOP of one training step (network forward + backward, VAE loss included) at ``config``, on ``meta``."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build(name, config).to("meta").train()
    x = torch.empty(batch, 4, *config.patch_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = net(x)
        loss = sum(o.float().sum() for o in (out if isinstance(out, list) else [out]))
        aux = net.pop_auxiliary_loss() if hasattr(net, "pop_auxiliary_loss") else None
        (loss if aux is None else loss + aux).backward()
    return counter.get_total_flops() / 1e12


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() where that is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def count(module: torch.nn.Module) -> int:
    from nnunet_kd.networks.common import count_parameters

    return count_parameters(module)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", type=int, nargs=3, default=[48, 48, 48], help="timed patch size (default 48^3)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2, as nnU-Net plans BraTS)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds (default 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    brats = configuration_for((128, 128, 128))
    timed = configuration_for(args.patch)
    results: dict = {"device": str(device), "torch_threads": torch.get_num_threads(), "cpu": cpu_model(),
                     "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                     "timed_patch": list(timed.patch_size), "batch": args.batch, "brats_patch": list(brats.patch_size),
                     "networks": {}}
    for label, name in TRAINERS.items():
        results["networks"][label] = {
            "trainer": name,
            "params_brats_plans": count(build(name, brats)),
            "params_timed_patch": count(build(name, timed)),
            "tflop_per_step_brats_plans": step_tflop(name, brats, args.batch),
        }
    steps = {label: step_function(name, timed, args.batch, device) for label, name in TRAINERS.items()}
    samples: dict[str, list[float]] = {label: [] for label in steps}
    labels = list(steps)
    for r in range(args.warmup + args.repeats):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for label in order:
            t0 = time.perf_counter()
            steps[label]()
            if r >= args.warmup:
                samples[label].append(time.perf_counter() - t0)
    base = np.median(samples[labels[0]])
    for label in labels:
        s = np.asarray(samples[label])
        results["networks"][label].update(step_s_median=float(np.median(s)), step_s_min=float(s.min()),
                                          step_s_all=[float(v) for v in s],
                                          ratio_to_stock=float(np.median(s) / base))

    print(f"device {device} ({results['gpu'] or results['cpu']}), torch threads {results['torch_threads']}; "
          f"timed patch {results['timed_patch']} batch {args.batch}, {args.repeats} rounds after {args.warmup} "
          f"warm-up")
    print("| network | trainer | params (BraTS plans 128^3) | params (timed patch) | TFLOP/step (BraTS plans) | "
          "step median (s) | step min (s) | x stock |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, r in results["networks"].items():
        print(f"| {label} | `{r['trainer']}` | {r['params_brats_plans'] / 1e6:.2f} M | "
              f"{r['params_timed_patch'] / 1e6:.2f} M | {r['tflop_per_step_brats_plans']:.2f} | "
              f"{r['step_s_median']:.3f} | {r['step_s_min']:.3f} | {r['ratio_to_stock']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
