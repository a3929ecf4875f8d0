"""progress_kd.png: drawn from nnU-Net's logger state, in the default style whatever nnU-Net's plot left behind."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import seaborn as sns

from nnunet_kd.trainers.kd_progress import plot_kd_progress


def _logging(n: int) -> dict:
    r = np.linspace(0, 1, n)
    return {"mean_fg_dice": list(0.5 * r), "teacher_mean_fg_dice": list(0.7 * r), "ema_fg_dice": list(0.4 * r),
            "barlow_loss": list(1 - 0.8 * r), "student_seg_loss": list(0.5 - r), "teacher_seg_loss": list(0.4 - r),
            "val_losses": list(0.3 - r), "train_losses": list(1 - r)}


def test_plot_is_written_in_default_style_and_leaves_global_style_alone(tmp_path: Path):
    png = tmp_path / "progress_kd.png"
    with matplotlib.rc_context():  # restored afterwards, so other tests keep their style
        sns.set(font_scale=2.5)  # what nnU-Net's progress.png does to the global style
        before = matplotlib.rcParams["font.size"]
        plot_kd_progress(_logging(6), png)
        assert matplotlib.rcParams["font.size"] == before
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 500 and image.shape[1] > 500
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert not list(tmp_path.glob("*.tmp.png"))


def test_nothing_is_drawn_before_the_first_validation(tmp_path: Path):
    png = tmp_path / "progress_kd.png"
    plot_kd_progress({"mean_fg_dice": [], "teacher_mean_fg_dice": []}, png)
    assert not png.exists()
