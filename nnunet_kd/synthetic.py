"""Realistic synthetic BraTS cases on the MNI152 2009a anatomy shipped with nilearn.

The anatomy (grey and white matter probability maps and the skull-stripped T1 template of the symmetric
MNI152 2009a atlas) comes from files inside the installed nilearn package; nothing is downloaded. CSF is what
grey and white matter leave inside the brain mask. Each case is the template under a mild random
affine + elastic deformation, with a glioma-like tumour painted into the white matter of one hemisphere:

* a necrotic core (canonical label 2) inside an enhancing rim (label 3),
* peritumoural edema (label 1) spreading preferentially along white matter, sparing CSF,
* optionally (post-treatment layout ``2024-gli``) a fluid-filled resection cavity (label 4) next to the tumour,
* or (paediatric 2024 layout ``2024-ped``) a fluid-filled cystic component (label 4) taking part of the
  necrotic core, whose rest stands for the non-enhancing tumour.

Intensities follow one table of typical MRI contrasts (:data:`CONTRAST`), with partial volume at tissue
borders, tissue texture, a smooth multiplicative bias field, Rician noise and a per-case global gain; outside
the brain the images are zero, as in skull-stripped BraTS releases.

Public functions:

* :func:`make_case` — one :class:`SyntheticCase` (canonical labels), deterministic in ``(seed, shape)``;
* :func:`write_brats_folder` — a folder laid out like a BraTS release (the names and labels of 2021, 2023 GLI,
  SSA, MEN, MET, PED, 2024 post-treatment GLI or 2024 PED, :data:`RELEASE_LAYOUTS`);
* :func:`case_seed`, :func:`case_id` — how :func:`write_brats_folder` numbers and seeds its cases.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnunet_kd.brats import (
    CYSTIC_COMPONENT,
    EDEMA,
    ENHANCING,
    MODALITIES,
    NECROSIS,
    RESECTION_CAVITY,
    get_convention,
)
from nnunet_kd.errors import NnunetKDError

#: Template files inside ``nilearn/datasets/data/`` (MNI152 2009a symmetric, 1 mm, skull-stripped).
TEMPLATE_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: Tissue classes whose fractions make up every voxel inside the brain.
TISSUES: tuple[str, ...] = ("csf", "gm", "wm", "edema", "necrosis", "enhancing")

#: Mean intensity of each tissue per modality, relative to white matter on T1 (typical clinical appearance):
#: T1 WM > GM > CSF with a slightly hypo-intense tumour and dark necrosis; T1ce equals T1 except the bright
#: enhancing rim (enhancement shows on T1ce only); T2 bright CSF, edema and necrosis; FLAIR like T2 but with
#: dark (suppressed) CSF and the brightest signal in the edema.
CONTRAST: dict[str, dict[str, float]] = {
    #         csf   gm    wm    edema necrosis enhancing
    "T1": dict(csf=0.30, gm=0.72, wm=1.00, edema=0.78, necrosis=0.38, enhancing=0.70),
    "T1ce": dict(csf=0.30, gm=0.72, wm=1.00, edema=0.78, necrosis=0.38, enhancing=1.60),
    "T2": dict(csf=2.00, gm=1.15, wm=0.80, edema=1.60, necrosis=1.85, enhancing=1.25),
    "FLAIR": dict(csf=0.25, gm=1.05, wm=0.80, edema=1.70, necrosis=0.95, enhancing=1.30),
}

#: Intensity of white matter on T1 before the per-case gain (BraTS scans store values in the hundreds/thousands).
BASE_INTENSITY = 1000.0

#: Smallest grid side :func:`make_case` accepts (the tumour needs a few voxels per compartment).
MIN_SIDE = 16
#: Largest grid (voxels). A case needs about 270 bytes per voxel at its peak (0.7 GB at 128^3, 4.5 GB at 256^3);
#: a BraTS volume (240x240x155) has 8.9 M voxels.
MAX_VOXELS = 256 ** 3


@dataclass(frozen=True)
class ReleaseLayout:
    """File naming and label convention of one BraTS release, as written by :func:`write_brats_folder`."""

    convention: str
    case_pattern: str  # format string with {index}
    separator: str  # between case id and file suffix
    suffixes: dict[str, str]  # canonical modality -> file suffix
    resection_cavity: bool = False  # labelled cases get a resection cavity (label 4)
    cystic_component: bool = False  # labelled cases get a cystic component (label 4, canonical dataset137-cc)

    def file_name(self, case: str, suffix: str) -> str:
        """``<case><separator><suffix>.nii.gz``, e.g. ``BraTS2021_00000_t1ce.nii.gz``."""
        return f"{case}{self.separator}{suffix}.nii.gz"


_SUFFIXES_2023 = {"T1": "t1n", "T1ce": "t1c", "T2": "t2w", "FLAIR": "t2f"}
#: Layouts :func:`write_brats_folder` can write (keys are also ``convert-brats`` layouts and label conventions).
RELEASE_LAYOUTS: dict[str, ReleaseLayout] = {
    "2021": ReleaseLayout("2021", "BraTS2021_{index:05d}", "_",
                          {"T1": "t1", "T1ce": "t1ce", "T2": "t2", "FLAIR": "flair"}),
    "2023": ReleaseLayout("2023", "BraTS-GLI-{index:05d}-000", "-", _SUFFIXES_2023),
    **{f"2023-{c.lower()}": ReleaseLayout(f"2023-{c.lower()}", f"BraTS-{c}-{{index:05d}}-000", "-", _SUFFIXES_2023)
       for c in ("SSA", "MEN", "MET", "PED")},
    "2024-gli": ReleaseLayout("2024-gli", "BraTS-GLI-{index:05d}-100", "-", _SUFFIXES_2023, resection_cavity=True),
    "2024-ped": ReleaseLayout("2024-ped", "BraTS-PED-{index:05d}-000", "-", _SUFFIXES_2023, cystic_component=True),
}


@dataclass
class SyntheticCase:
    """One synthetic multi-modal case on a grid of shape (X, Y, Z)."""

    images: dict[str, np.ndarray]  # keys exactly brats.MODALITIES, float32 (X, Y, Z), zero outside the brain
    seg: np.ndarray | None  # uint8 canonical labels (0 bg, 1 edema, 2 necrosis, 3 enhancing, 4 cavity or cyst); None if unlabeled
    affine: np.ndarray  # 4x4 RAS voxel-to-world affine (mm)
    brain_mask: np.ndarray  # bool (X, Y, Z)
    #: healthy-tissue fractions "csf", "gm", "wm" (float32, summing to 1 in the brain) before the tumour is painted
    tissues: dict[str, np.ndarray] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class _Template:
    maps: np.ndarray  # (3, ...) float32: gm, wm, brain mask, cropped around the brain with a margin
    origin: np.ndarray  # template voxel index of maps[:, 0, 0, 0]
    extent: np.ndarray  # size of the brain bounding box (voxels = mm)
    centre: np.ndarray  # centre of the brain bounding box, in crop voxel coordinates
    affine: np.ndarray  # template voxel-to-world affine


@dataclass(frozen=True)
class _Anatomy:
    maps: np.ndarray  # template maps low-pass filtered for sampling at `spacing`
    spacing: np.ndarray  # (3,) mm per output voxel
    affine: np.ndarray  # output grid voxel-to-world
    grid_to_crop: np.ndarray  # 4x4: output voxel index -> crop voxel coordinates (before deformation)
    midline: float  # crop x coordinate of the mid-sagittal plane (world x = 0)


def _template_folder() -> Path:
    return Path(str(importlib.resources.files("nilearn.datasets") / "data"))


@functools.lru_cache(maxsize=1)
def _template() -> _Template:
    import nibabel as nib

    folder = _template_folder()
    arrays: dict[str, np.ndarray] = {}
    affine = None
    for key, name in TEMPLATE_FILES.items():
        path = folder / name
        if not path.is_file():
            raise NnunetKDError(f"MNI152 template file {path} not found; the installed nilearn (>= 0.10) "
                                f"should ship it under nilearn/datasets/data/")
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
        arrays[key] = data / max(float(data.max()), 1e-6)
        affine = image.affine if affine is None else affine
    gm, wm = arrays["gm"], arrays["wm"]
    mask = (arrays["t1"] > 0) | (gm + wm > 0.5)
    mask = ndimage.binary_fill_holes(mask)
    lo = np.argwhere(mask).min(0)
    hi = np.argwhere(mask).max(0) + 1
    margin = 8
    stack = np.stack([gm, wm, mask.astype(np.float32)])
    pad = [(0, 0)] + [(margin, margin)] * 3
    stack = np.pad(stack, pad)[:, lo[0]:hi[0] + 2 * margin, lo[1]:hi[1] + 2 * margin, lo[2]:hi[2] + 2 * margin]
    origin = lo - margin
    extent = (hi - lo).astype(np.float64)
    centre = margin + (extent - 1) / 2
    return _Template(np.ascontiguousarray(stack), origin, extent, centre, np.asarray(affine, dtype=np.float64))


@functools.lru_cache(maxsize=2)
def _anatomy(shape: tuple[int, int, int], spacing_mm: float | None = None) -> _Anatomy:
    """The template prepared for sampling on ``shape``: the brain's bounding box (+2 mm) fills the grid, or, with
    ``spacing_mm``, isotropic voxels of that size centred on the brain (a BraTS grid: 240x240x155 at 1 mm)."""
    tpl = _template()
    if spacing_mm is None:
        spacing = (tpl.extent + 4.0) / np.asarray(shape)  # 1 mm * cropped template shape / shape
    else:
        spacing = np.full(3, float(spacing_mm))
    sigma = 0.4 * np.sqrt(np.maximum(spacing**2 - 1.0, 0.0))  # anti-aliasing before sampling coarser than 1 mm
    maps = np.stack([ndimage.gaussian_filter(m, sigma) for m in tpl.maps]) if sigma.max() > 0.05 else tpl.maps
    grid_to_crop = np.diag([*spacing, 1.0])
    grid_to_crop[:3, 3] = tpl.centre - spacing * (np.asarray(shape) - 1) / 2
    crop_to_template = np.eye(4)
    crop_to_template[:3, 3] = tpl.origin
    affine = tpl.affine @ crop_to_template @ grid_to_crop
    world_to_crop = np.linalg.inv(tpl.affine @ crop_to_template)
    midline = float((world_to_crop @ np.array([0.0, 0.0, 0.0, 1.0]))[0])
    return _Anatomy(maps.astype(np.float32), spacing, affine, grid_to_crop, midline)


# ----------------------------------------------------------------------------------------------- random fields


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float | np.ndarray) -> np.ndarray:
    """Gaussian random field with unit standard deviation and correlation length ``sigma`` voxels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def _coarse_field(rng: np.random.Generator, shape: tuple[int, int, int], n_ctrl: int = 4) -> np.ndarray:
    """Very smooth random field: cubic-spline interpolation of ``n_ctrl``^3 normal control points."""
    ctrl = rng.standard_normal((n_ctrl,) * 3)
    weights = [_spline_weights(n_ctrl, s) for s in shape]  # separable tensor-product interpolation
    return np.einsum("ai,bj,ck,ijk->abc", *weights, ctrl, optimize=True).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _spline_weights(n_ctrl: int, size: int) -> np.ndarray:
    """(size, n_ctrl) matrix interpolating ``n_ctrl`` control points onto ``size`` samples (cubic spline)."""
    x = np.linspace(0, n_ctrl - 1, size)[None]
    return np.stack([ndimage.map_coordinates(np.eye(n_ctrl)[j], x, order=3, mode="nearest")
                     for j in range(n_ctrl)], axis=1)


def _random_rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-max_degrees, max_degrees, 3))
    rot = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    return rot


def _deformed_coordinates(rng: np.random.Generator, anat: _Anatomy, shape: tuple[int, int, int]) -> np.ndarray:
    """Crop voxel coordinates (3, X, Y, Z) sampled by each output voxel under a mild random deformation."""
    linear = _random_rotation(rng, 6.0) @ np.diag(rng.uniform(0.94, 1.06, 3))
    shift = rng.uniform(-3.0, 3.0, 3)  # mm == template voxels
    elastic = rng.uniform(1.0, 3.0)  # mm
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    centre = (np.asarray(shape, dtype=np.float32)[:, None] - 1) / 2
    offset_mm = anat.spacing[:, None].astype(np.float32) * (grid - centre)
    tpl_centre = anat.grid_to_crop[:3, :3] @ centre + anat.grid_to_crop[:3, 3:]
    coords = (linear @ offset_mm + tpl_centre + shift[:, None]).reshape(3, *shape)
    for axis in range(3):
        coords[axis] += elastic * _coarse_field(rng, shape, 5)
    return coords.astype(np.float32)


# ----------------------------------------------------------------------------------------------- tumour


def _paint_tumour(rng: np.random.Generator, brain: np.ndarray, wm: np.ndarray, csf: np.ndarray,
                  side_mm: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Canonical label map of one glioma-like tumour (edema 1, necrosis 2, enhancing 3) inside ``brain``."""
    shape = brain.shape
    voxel = float(spacing.max())
    # sizes in mm, bounded below in voxels so that every compartment exists on coarse grids
    rim_mm = max(rng.uniform(3.0, 6.0), 1.4 * voxel)
    core_mm = max(rng.uniform(13.0, 26.0), rim_mm + 1.6 * voxel)
    edema_mm = max(rng.uniform(6.0, 20.0), 2.5 * voxel)
    hemisphere = rng.choice([-1.0, 1.0])

    depth_mm = ndimage.distance_transform_edt(brain, sampling=spacing)
    candidates = brain & (wm > 0.5) & (hemisphere * side_mm > 8.0) & (depth_mm > core_mm + 2 * voxel)
    if not candidates.any():
        candidates = brain & (hemisphere * side_mm > 0) & (depth_mm > core_mm)
    if not candidates.any():
        candidates = depth_mm >= depth_mm.max() * 0.9
    options = np.argwhere(candidates)
    centre = options[rng.integers(len(options))]

    # irregular ellipsoidal core: normalised radius with random axes/orientation and a bumpy surface
    axes = rng.uniform(0.75, 1.3, 3)
    axes /= np.prod(axes) ** (1 / 3)
    rotation = _random_rotation(rng, 90.0)
    offsets_mm = (np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None]) * spacing[:, None]
    local = (rotation.T @ offsets_mm) / axes[:, None]
    radius = (np.linalg.norm(local, axis=0) / core_mm).reshape(shape)
    bump_sigma = np.maximum(core_mm / 2 / spacing, 1.0)
    radius = radius * (1 + 0.15 * np.clip(_smooth_noise(rng, shape, bump_sigma), -2.5, 2.5))
    inner = 1 - (rim_mm / core_mm) * (1 + 0.3 * np.clip(_smooth_noise(rng, shape, bump_sigma), -1.5, 1.5))
    core = (radius < 1) & brain
    necrosis = (radius < inner) & ndimage.binary_erosion(core)  # a closed enhancing rim surrounds it

    # edema: decays with distance from the core, favoured in white matter, irregular, no edema in CSF
    distance_mm = ndimage.distance_transform_edt(~core, sampling=spacing)
    wm_smooth = ndimage.gaussian_filter(wm, 1.0)
    score = np.exp(-distance_mm / edema_mm) * (0.25 + 0.75 * wm_smooth)
    score += 0.12 * _smooth_noise(rng, shape, np.maximum(4.0 / spacing, 1.0))
    edema = (score > 0.35) & brain & (csf < 0.6)
    edema |= ndimage.binary_dilation(core) & brain  # edema surrounds the enhancing rim
    components, _ = ndimage.label(edema | core)
    centre_component = components[tuple(centre)]
    if centre_component:
        edema &= components == centre_component

    seg = np.zeros(shape, dtype=np.uint8)
    seg[edema] = EDEMA
    seg[core] = ENHANCING
    seg[necrosis] = NECROSIS
    return seg


def _paint_cavity(rng: np.random.Generator, seg: np.ndarray, brain: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """``seg`` with a ball-shaped resection cavity (label 4) in the brain, touching no tumour voxel but close to it."""
    tumour = seg > 0
    voxel = float(spacing.max())
    radius_mm = max(rng.uniform(5.0, 9.0), 1.6 * voxel)
    gap_mm = ndimage.distance_transform_edt(~tumour, sampling=spacing)
    depth_mm = ndimage.distance_transform_edt(brain, sampling=spacing)
    candidates = brain & (gap_mm > radius_mm + voxel) & (gap_mm < radius_mm + 3 * voxel) & (depth_mm > radius_mm)
    if not candidates.any():
        candidates = brain & ~tumour & (depth_mm >= depth_mm[brain & ~tumour].max() * 0.5)
    options = np.argwhere(candidates)
    centre = options[rng.integers(len(options))]
    offsets_mm = (np.indices(seg.shape, dtype=np.float32) - centre.reshape(3, 1, 1, 1)) * spacing.reshape(3, 1, 1, 1)
    ball = (np.linalg.norm(offsets_mm, axis=0) <= radius_mm) & brain & ~tumour
    ball[tuple(centre)] = True
    out = seg.copy()
    out[ball] = RESECTION_CAVITY
    return out


def _paint_cyst(rng: np.random.Generator, seg: np.ndarray) -> np.ndarray:
    """``seg`` with part of the necrotic core (the voxels nearest a random one of them) relabelled as a cystic
    component (label 4); at least one voxel of each stays, so both labels are present."""
    necrosis = np.argwhere(seg == NECROSIS)
    out = seg.copy()
    if len(necrosis) < 2:
        return out
    centre = necrosis[rng.integers(len(necrosis))]
    order = np.argsort(np.linalg.norm(necrosis - centre, axis=1), kind="stable")
    n_cyst = int(np.clip(round(rng.uniform(0.3, 0.6) * len(necrosis)), 1, len(necrosis) - 1))
    out[tuple(necrosis[order[:n_cyst]].T)] = CYSTIC_COMPONENT
    return out


# ----------------------------------------------------------------------------------------------- images


def check_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    try:
        values = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise NnunetKDError(f"grid shape {shape!r} is not three integers") from None
    if len(values) != 3 or min(values) < MIN_SIDE or any(v != s for v, s in zip(values, shape)):
        raise NnunetKDError(f"grid shape {tuple(shape)} must be three integers >= {MIN_SIDE}")
    n_voxels = values[0] * values[1] * values[2]
    if n_voxels > MAX_VOXELS:
        raise NnunetKDError(f"grid shape {'x'.join(map(str, values))} has {n_voxels:,} voxels, more than the "
                            f"{MAX_VOXELS:,} (256^3) a synthetic case may have (a BraTS volume is 240x240x155)")
    return values  # type: ignore[return-value]


def check_spacing(spacing: float | None) -> float | None:
    """``None`` (the brain fills the grid) or a finite voxel size in mm, > 0."""
    if spacing is None:
        return None
    try:
        value = float(spacing)
    except (TypeError, ValueError):
        raise NnunetKDError(f"voxel spacing {spacing!r} is not a number (mm)") from None
    if not np.isfinite(value) or value <= 0:
        raise NnunetKDError(f"voxel spacing {spacing!r} mm must be a positive number")
    return value


def _render(rng: np.random.Generator, fractions: dict[str, np.ndarray], brain: np.ndarray,
            shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    tumour = fractions["edema"] + fractions["necrosis"] + fractions["enhancing"]
    texture_amplitude = 0.03 + 0.09 * tumour  # tumours are more heterogeneous than healthy tissue
    texture = 1 + texture_amplitude * np.clip(_smooth_noise(rng, shape, 1.2), -3, 3)
    images: dict[str, np.ndarray] = {}
    for modality in MODALITIES:
        table = CONTRAST[modality]
        clean = sum(fractions[t] * table[t] for t in TISSUES) * texture
        bias = np.exp(0.08 * _coarse_field(rng, shape, 3))
        gain = BASE_INTENSITY * rng.uniform(0.8, 1.25)
        sigma = rng.uniform(0.02, 0.045) * table["wm"]
        real = clean * bias + sigma * rng.standard_normal(shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(shape, dtype=np.float32)
        image = gain * np.sqrt(real**2 + imag**2)  # Rician magnitude
        image[~brain] = 0
        images[modality] = image.astype(np.float32)
    return images


def make_case(seed: int, shape: tuple[int, int, int] = (64, 64, 64), labeled: bool = True,
              resection_cavity: bool = False, cystic_component: bool = False,
              spacing: float | None = None) -> SyntheticCase:
    """One synthetic BraTS-like case, deterministic in ``(seed, shape, spacing)``.

    The four images (keys :data:`nnunet_kd.brats.MODALITIES`) and the canonical label map share the grid
    ``shape``; the affine is RAS, its spacing (mm) is the brain's bounding box in the 1 mm template (plus 2 mm)
    divided by ``shape``, so that the brain fills the grid; or, given ``spacing`` (mm, isotropic), that spacing
    with the grid centred on the brain (a brain-sized BraTS grid is ``(240, 240, 155)`` at ``spacing=1.0``; a
    grid smaller than the brain cuts it off).
    ``labeled=False`` still paints a tumour but returns ``seg=None`` (an unlabelled case).
    ``resection_cavity=True`` adds a fluid-filled cavity (label 4, CSF contrast) next to the tumour; cases
    without it are the same as before for the same seed. ``cystic_component=True`` (not with
    ``resection_cavity``) relabels part of the necrotic core as a fluid-filled cyst, label 4 in the
    ``dataset137-cc`` convention of BraTS 2024 paediatric data.
    """
    if resection_cavity and cystic_component:
        raise NnunetKDError("a synthetic case has a resection cavity or a cystic component (both are label 4), "
                            "not both")
    shape = check_shape(shape)
    anat = _anatomy(shape, check_spacing(spacing))
    rng = np.random.default_rng(int(seed))

    coords = _deformed_coordinates(rng, anat, shape)
    gm, wm, mask = (ndimage.map_coordinates(m, coords, order=1, cval=0.0, prefilter=False) for m in anat.maps)
    brain = ndimage.binary_fill_holes(mask > 0.5)
    gm = np.clip(gm, 0, 1) * brain
    wm = np.clip(wm, 0, 1) * brain
    total = np.maximum(gm + wm, 1.0)
    gm, wm = gm / total, wm / total
    csf = (1 - gm - wm) * brain

    side_mm = coords[0] - anat.midline  # signed distance from the mid-sagittal plane (crop voxels are 1 mm)
    seg = None
    for _ in range(10):
        seg = _paint_tumour(rng, brain, wm, csf, side_mm, anat.spacing)
        if all((seg == label).any() for label in (EDEMA, NECROSIS, ENHANCING)):
            break
    else:  # pragma: no cover - would be a bug in _paint_tumour
        raise RuntimeError(f"could not place a tumour with all three labels for seed {seed}, shape {shape}")

    if resection_cavity:
        seg = _paint_cavity(rng, seg, brain, anat.spacing)
    if cystic_component:
        seg = _paint_cyst(rng, seg)
    soft = {name: ndimage.gaussian_filter((seg == label).astype(np.float32), 0.5) * brain
            for name, label in (("edema", EDEMA), ("necrosis", NECROSIS), ("enhancing", ENHANCING))}
    cavity = ndimage.gaussian_filter((seg == 4).astype(np.float32), 0.5) * brain  # cavity or cyst: fluid
    healthy = np.clip(1 - soft["edema"] - soft["necrosis"] - soft["enhancing"] - cavity, 0, 1)
    fractions = {"csf": csf * healthy + cavity, "gm": gm * healthy, "wm": wm * healthy, **soft}
    images = _render(rng, fractions, brain, shape)
    tissues = {"csf": csf.astype(np.float32), "gm": gm.astype(np.float32), "wm": wm.astype(np.float32)}
    return SyntheticCase(images=images, seg=seg if labeled else None, affine=anat.affine.copy(),
                         brain_mask=brain, tissues=tissues)


# ----------------------------------------------------------------------------------------------- release folders


def case_seed(seed: int, index: int) -> int:
    """Seed of case number ``index`` of a folder written with ``seed`` (independent streams per case)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def case_id(layout: str, index: int) -> str:
    """Case identifier of case number ``index`` in ``layout`` (``BraTS2021_00003``, ``BraTS-GLI-00003-000``)."""
    return _layout(layout).case_pattern.format(index=index)


def _layout(layout: str) -> ReleaseLayout:
    key = str(layout)
    if key not in RELEASE_LAYOUTS:
        raise NnunetKDError(f"unknown BraTS layout '{layout}'; expected one of {', '.join(RELEASE_LAYOUTS)}")
    return RELEASE_LAYOUTS[key]


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def _write_case(case: SyntheticCase, folder: Path, cid: str, layout: ReleaseLayout) -> None:
    folder.mkdir()
    for modality in MODALITIES:
        _save(case.images[modality].astype(np.float32), case.affine,
              folder / layout.file_name(cid, layout.suffixes[modality]))
    if case.seg is not None:
        seg = get_convention(layout.convention).from_canonical_array(case.seg).astype(np.uint8)
        _save(seg, case.affine, folder / layout.file_name(cid, "seg"))


def write_brats_folder(out: str | Path, n_cases: int, layout: str = "2021", seed: int = 0,
                       shape: tuple[int, int, int] = (64, 64, 64), unlabeled: int = 0,
                       progress: bool = True, overwrite: bool = False, spacing: float | None = None) -> list[str]:
    """Write ``n_cases`` labelled and ``unlabeled`` unlabelled synthetic cases as a BraTS release folder.

    Layout ``"2021"``: ``OUT/BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz`` with labels
    NCR 1, ED 2, ET 4; layout ``"2023"``: ``OUT/BraTS-GLI-XXXXX-000/BraTS-GLI-XXXXX-000-{t1n,t1c,t2w,t2f,seg}``
    with labels NETC 1, SNFH 2, ET 3; ``"2023-ssa"``, ``-men``, ``-met``, ``-ped`` the same with their prefix
    (``BraTS-MEN-XXXXX-000``); ``"2024-gli"``: ``BraTS-GLI-XXXXX-100`` with a resection cavity, labels NETC 1,
    SNFH 2, ET 3, RC 4 (``convert-brats`` recognises it as post-treatment when a folder name contains 2024, or
    with ``--layout 2024-gli``); ``"2024-ped"``: ``BraTS-PED-XXXXX-000`` with a cystic component, labels ET 1,
    NET 2, CC 3, ED 4 (``convert-brats`` needs a folder name with 2024, or ``--layout 2024-ped``). Unlabelled
    cases follow the labelled ids and have no seg file. Case ``i`` is ``make_case(case_seed(seed, i), shape,
    spacing=spacing)``. The folder is built next to ``out`` and renamed into
    place; an existing non-empty ``out`` is an error unless ``overwrite``. Returns the case ids written.
    """
    spec = _layout(layout)
    shape = check_shape(shape)
    spacing = check_spacing(spacing)
    n_cases, unlabeled = int(n_cases), int(unlabeled)
    if n_cases < 0 or unlabeled < 0 or n_cases + unlabeled < 1:
        raise NnunetKDError(f"need at least one case (got {n_cases} labelled, {unlabeled} unlabelled)")
    if n_cases + unlabeled > 100000:
        raise NnunetKDError("BraTS case ids have 5 digits: at most 100000 cases")
    out = Path(out)
    if out.exists() and not overwrite:
        if not out.is_dir():
            raise NnunetKDError(f"output {out} exists and is not a folder; choose another path or overwrite it "
                                "(--overwrite)")
        if any(out.iterdir()):
            raise NnunetKDError(f"output folder {out} already exists and is not empty; choose another folder or "
                                "overwrite it (--overwrite)")

    from nnunet_kd.safe_io import staged_folder

    ids = [case_id(layout, i) for i in range(n_cases + unlabeled)]
    replace = [out] if out.exists() or out.is_symlink() else []
    with staged_folder(out, replace=replace) as tmp:
        iterator = range(len(ids))
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc=f"synthetic BraTS {layout}", unit="case")
        for i in iterator:
            case = make_case(case_seed(seed, i), shape, labeled=i < n_cases, resection_cavity=spec.resection_cavity,
                             cystic_component=spec.cystic_component, spacing=spacing)
            _write_case(case, tmp / ids[i], ids[i], spec)
    return ids


# ----------------------------------------------------------------------------------------------- variants

def add_low_signal_rim(dataset: str | Path, suffixes: tuple[str, ...] = ("_0000", "_0002"), width: int = 1,
                       margin: int = 3, level: float = 0.03, file_ending: str = ".nii.gz") -> int:
    """Make an nnU-Net raw dataset's modalities differ in non-zero extent: a thin low-signal rim in T1/T2.

    Every image and label of ``dataset`` (``imagesTr``, ``imagesTs``, ``labelsTr``) is first padded with
    ``margin`` zero voxels on each side (origin shifted, so the anatomy stays where it was; synthetic brains fill
    their grid, BraTS brains do not), then the ``suffixes`` images (default T1 ``_0000`` and T2 ``_0002``) get a
    ``width``-voxel rim just outside their non-zero region, of ``level`` x the median of their non-zero voxels: like
    a skull-stripping mask that is a little wider for T1/T2 than for T1ce/FLAIR. nnU-Net's crop and normalisation
    of such a case then differ between all four channels and a two-channel student's (``docs/kd_trainer.md``).
    Files are rewritten in place; returns the number of images given a rim.
    """
    import SimpleITK as sitk

    dataset = Path(dataset)
    changed = 0
    for sub in ("imagesTr", "imagesTs", "labelsTr"):
        for path in sorted((dataset / sub).glob(f"*{file_ending}")) if (dataset / sub).is_dir() else []:
            image = sitk.ConstantPad(sitk.ReadImage(str(path)), [margin] * 3, [margin] * 3, 0)
            if sub.startswith("images") and any(path.name.endswith(f"{s}{file_ending}") for s in suffixes):
                array = sitk.GetArrayFromImage(image)
                inside = array != 0
                rim = ndimage.binary_dilation(inside, iterations=width) & ~inside
                array = array.copy()
                array[rim] = level * float(np.median(array[inside]))
                padded = sitk.GetImageFromArray(array)
                padded.CopyInformation(image)
                image = padded
                changed += 1
            sitk.WriteImage(image, str(path))
    return changed
