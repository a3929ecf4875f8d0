"""``progress_kd.png``: student vs teacher pseudo-Dice and the KD loss terms per epoch."""

from __future__ import annotations

import os
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_kd_progress(logging: Mapping[str, list], png_path: str | os.PathLike) -> None:
    """Plot nnU-Net's logger state of a KD run: student/teacher pseudo Dice and every ``*_loss`` term per epoch."""
    n = min(len(logging.get(k, [])) for k in ("mean_fg_dice", "teacher_mean_fg_dice"))
    if n == 0:
        return
    epochs = list(range(n))
    # nnU-Net's own progress plot changes matplotlib's global style (seaborn, font_scale 2.5): draw in the default one
    with plt.style.context("default"):
        fig, (ax_dice, ax_loss) = plt.subplots(2, 1, figsize=(10, 9), sharex=True)
        ax_dice.plot(epochs, logging["mean_fg_dice"][:n], "g-", label="student pseudo Dice")
        ax_dice.plot(epochs, logging["teacher_mean_fg_dice"][:n], "b-", label="teacher pseudo Dice")
        if len(logging.get("ema_fg_dice", [])) >= n:
            ax_dice.plot(epochs, logging["ema_fg_dice"][:n], "g:", label="student (moving average)")
        ax_dice.set_ylabel("pseudo Dice (validation patches)")
        ax_dice.set_ylim(0, 1)
        ax_dice.grid(alpha=0.3)
        ax_dice.legend(loc="lower right")
        loss_keys = sorted(k for k in logging if k.endswith("_loss")) + ["val_losses"]
        for key in loss_keys:  # every named loss term of the trainer, plus nnU-Net's validation loss
            if len(logging.get(key, [])) >= n:
                ax_loss.plot(epochs, logging[key][:n], "--" if key == "val_losses" else "-", label=key)
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("loss")
        ax_loss.grid(alpha=0.3)
        ax_loss.legend(loc="upper right")
        fig.suptitle("nnunet-kd: teacher-student training progress")
        fig.tight_layout()
        tmp = f"{png_path}.tmp.png"
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
    os.replace(tmp, png_path)
