"""A small synthetic cohort with a planted signal, for the demo workflow and the tests.

Each slide is a pyramidal, tiled, JPEG-compressed TIFF at 0.5 um/px with its resolution in
the TIFF tags, showing tissue of two kinds on a white background:

- *tumour*: crowded, large, dark-purple nuclei;
- *stroma*: pink, fibrous, with sparse elongated nuclei.

Spots lie on a 200 um grid (as in Visium/ST, 100 um across). Each spot's counts are drawn
from rates that depend on the tumour/stroma fraction under the spot for the *planted*
genes, and not at all for the *noise* genes, so a model must find the first and not the
second. The truth is written beside the data:

- ``truth/genes.tsv``: gene, kind (``tumour``, ``stroma``, ``noise``, ``housekeeping``,
  ``compensator``), effect (log fold change per unit fraction); the one compensator gene
  keeps each spot's total fixed so that normalisation does not leak the planted signal
  into the noise genes (it is region-driven itself, inversely);
- ``truth/{sample}_regions.png``: region labels (0 background, 1 stroma, 2 tumour) at
  ``truth/regions.json``'s ``downsample``;
- ``truth/spots.tsv``: per spot, its tumour and stroma fractions.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy import ndimage

from slide2expr.atomic import atomic_output

log = logging.getLogger(__name__)

BACKGROUND, STROMA, TUMOUR = 0, 1, 2
LABEL_DOWNSAMPLE = 8


@dataclass(frozen=True)
class DemoSpec:
    """Size and content of the synthetic cohort.

    Attributes
    ----------
    n_slides
        Slides, one patient each.
    size_px
        Level-0 width and height of each slide.
    mpp
        Micrometres per pixel written into the TIFF resolution tags.
    spot_pitch_um, spot_diameter_um
        The spot grid (Visium: 100 um pitch, 55 um spots; ST: 200 um, 100 um).
    n_tumour_genes, n_stroma_genes, n_noise_genes, n_housekeeping_genes
        How many genes of each kind.
    seed
        Everything is drawn from this seed: the same spec gives the same files.
    """

    n_slides: int = 6
    size_px: int = 4096
    mpp: float = 0.5
    spot_pitch_um: float = 200.0
    spot_diameter_um: float = 100.0
    n_tumour_genes: int = 8
    n_stroma_genes: int = 4
    n_noise_genes: int = 40
    n_housekeeping_genes: int = 8
    seed: int = 0


def make_demo_cohort(out_dir: str | Path, spec: DemoSpec | None = None) -> Path:
    """Write the synthetic cohort to ``out_dir``.

    Parameters
    ----------
    out_dir
        Destination; created if needed. Layout: ``slides/``, ``spots/``, ``counts/``,
        ``bulk_counts.tsv``, ``samples.tsv`` (spot mode), ``samples_bulk.tsv`` and ``truth/``.
    spec
        Cohort size and content; defaults to :class:`DemoSpec`.

    Returns
    -------
    Path
        ``out_dir``.
    """
    spec = spec or DemoSpec()
    out = Path(out_dir)
    for sub in ("slides", "spots", "counts", "truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    genes = _gene_table(spec, rng)
    rows, spot_truth, bulk_rows = [], [], []
    for i in range(spec.n_slides):
        sample = f"demo{i + 1}"
        labels = _region_labels(spec, rng)
        slide_path = out / "slides" / f"{sample}.tiff"
        _write_pyramid_tiff(slide_path, _render(labels, spec, rng), spec.mpp)
        Image.fromarray(labels.astype(np.uint8)).save(out / "truth" / f"{sample}_regions.png")
        spots = _spots_on_tissue(labels, spec)
        counts = _spot_counts(spots, genes, rng)
        spots_out = spots[["spot_id", "pixel_x", "pixel_y"]]
        _write_tsv(spots_out, out / "spots" / f"{sample}.tsv", index=False)
        _write_tsv(counts, out / "counts" / f"{sample}.tsv", index=True)
        spot_truth.append(spots.assign(sample_id=sample)[
            ["sample_id", "spot_id", "tumour_fraction", "stroma_fraction"]])
        tumour = float(np.mean(labels == TUMOUR) / max(np.mean(labels > 0), 1e-9))
        bulk_rows.append(_bulk_counts(sample, tumour, genes, rng))
        rows.append({
            "sample_id": sample,
            "slide": str(slide_path.resolve()),
            "patient": f"P{i + 1}",
            "counts": str((out / "counts" / f"{sample}.tsv").resolve()),
            "spots": str((out / "spots" / f"{sample}.tsv").resolve()),
        })
        log.info("demo slide %s: %d spots, tumour fraction %.2f", sample, len(spots), tumour)
    sheet = pd.DataFrame(rows)
    _write_tsv(sheet, out / "samples.tsv", index=False)
    _write_tsv(sheet[["sample_id", "slide", "patient"]], out / "samples_bulk.tsv", index=False)
    bulk = pd.DataFrame(bulk_rows).set_index("sample_id")
    _write_tsv(bulk, out / "bulk_counts.tsv", index=True)
    _write_tsv(genes, out / "truth" / "genes.tsv", index=False)
    _write_tsv(pd.concat(spot_truth), out / "truth" / "spots.tsv", index=False)
    (out / "truth" / "regions.json").write_text(json.dumps({
        "downsample": LABEL_DOWNSAMPLE, "labels": {"background": BACKGROUND, "stroma": STROMA,
                                                   "tumour": TUMOUR},
        "mpp": spec.mpp, "spec": spec.__dict__}, indent=2))
    return out


def _write_tsv(frame: pd.DataFrame, path: Path, *, index: bool) -> None:
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=index)


def _gene_table(spec: DemoSpec, rng: np.random.Generator) -> pd.DataFrame:
    kinds = (["tumour"] * spec.n_tumour_genes + ["stroma"] * spec.n_stroma_genes
             + ["noise"] * spec.n_noise_genes + ["housekeeping"] * spec.n_housekeeping_genes
             + ["compensator"])
    names = []
    counters: dict[str, int] = {}
    for kind in kinds:
        counters[kind] = counters.get(kind, 0) + 1
        names.append(f"{kind.upper()}{counters[kind]}")
    base = rng.lognormal(mean=np.log(20.0), sigma=0.6, size=len(kinds))
    effect = np.array([2.5 if k in ("tumour", "stroma") else 0.0 for k in kinds])
    effect *= rng.uniform(0.7, 1.3, size=len(kinds))
    return pd.DataFrame({"gene": names, "kind": kinds, "base_rate": base, "effect": effect})


def _region_labels(spec: DemoSpec, rng: np.random.Generator) -> np.ndarray:
    n = spec.size_px // LABEL_DOWNSAMPLE
    yy, xx = np.mgrid[0:n, 0:n] / n
    angle = np.arctan2(yy - 0.5, xx - 0.5)
    wobble = sum(rng.uniform(0.01, 0.04) * np.sin(k * angle + rng.uniform(0, 6.3))
                 for k in range(2, 6))
    radius = np.hypot((xx - 0.5) / rng.uniform(0.38, 0.45), (yy - 0.5) / rng.uniform(0.35, 0.45))
    tissue = radius < 1.0 + wobble
    tumour = np.zeros_like(tissue)
    for _ in range(rng.integers(2, 4)):
        cx, cy = rng.uniform(0.3, 0.7, size=2)
        rx, ry = rng.uniform(0.08, 0.18, size=2)
        tumour |= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0
    labels = np.where(tissue, STROMA, BACKGROUND)
    labels[tissue & tumour] = TUMOUR
    return labels.astype(np.uint8)


def _render(labels: np.ndarray, spec: DemoSpec, rng: np.random.Generator) -> np.ndarray:
    size = spec.size_px
    # Fibrous stroma: anisotropic low-frequency streaks.
    streaks = ndimage.gaussian_filter(rng.normal(size=(size // 4, size // 4)), sigma=(0.6, 6))
    streaks = streaks / (streaks.std() + 1e-6)
    canvas = Image.fromarray(_base_colours(labels, streaks, size))
    draw = ImageDraw.Draw(canvas)
    um = 1.0 / spec.mpp  # pixels per micrometre
    for label, count, radius_um, colour, elongation in (
        (TUMOUR, 0.012, 4.5, (72, 30, 110), 1.2),
        (STROMA, 0.0012, 2.5, (110, 50, 120), 3.0),
    ):
        ys, xs = np.nonzero(labels == label)
        n = int(count * len(ys) * LABEL_DOWNSAMPLE ** 2 / (radius_um * um) ** 2 * 4)
        pick = rng.integers(0, len(ys), size=n) if len(ys) else np.empty(0, dtype=int)
        jitter = rng.uniform(0, LABEL_DOWNSAMPLE, size=(n, 2))
        for (y, x), (jy, jx) in zip(zip(ys[pick], xs[pick], strict=True), jitter, strict=True):
            cx, cy = x * LABEL_DOWNSAMPLE + jx, y * LABEL_DOWNSAMPLE + jy
            r = radius_um * um * rng.uniform(0.7, 1.3)
            rx, ry = r * elongation, r
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry),
                         fill=tuple(int(c + rng.integers(-15, 15)) for c in colour))
    out = np.asarray(canvas).astype(np.int16)
    out += rng.integers(-6, 7, size=out.shape, dtype=np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


def _base_colours(labels: np.ndarray, streaks: np.ndarray, size: int) -> np.ndarray:
    """The region colours at level 0, stroma streaked: ``(size, size, 3)`` uint8.

    Computed in bands of rows so the float intermediates stay small (the same arithmetic,
    pixel for pixel, as on the whole image at once, at a fraction of the memory traffic).
    """
    palette = np.array([[243, 241, 244], [236, 170, 198], [206, 160, 212]], dtype=np.float32)
    tint = np.array([6, 14, 10])
    out = np.empty((size, size, 3), dtype=np.uint8)
    band = 64 * LABEL_DOWNSAMPLE  # a multiple of the label and streak block sizes
    for y0 in range(0, size, band):
        y1 = min(y0 + band, size)
        full = np.repeat(np.repeat(labels[y0 // LABEL_DOWNSAMPLE:-(-y1 // LABEL_DOWNSAMPLE)],
                                   LABEL_DOWNSAMPLE, 0), LABEL_DOWNSAMPLE, 1)[: y1 - y0, :size]
        img = palette[full]
        streak = np.repeat(np.repeat(streaks[y0 // 4:-(-y1 // 4)], 4, 0), 4, 1)[
            : y1 - y0, :size]
        stroma = full == STROMA
        img[stroma] += streak[stroma, None] * tint
        np.clip(img, 0, 255, out=img)
        out[y0:y1] = img.astype(np.uint8)
    return out


def _write_pyramid_tiff(path: Path, image: np.ndarray, mpp: float) -> None:
    import tifffile

    px_per_cm = 1e4 / mpp
    with atomic_output(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        level = image
        downsample = 1
        while True:
            tif.write(
                level, tile=(256, 256), compression="jpeg", compressionargs={"level": 90},
                photometric="rgb", subfiletype=0 if downsample == 1 else 1,
                resolution=(px_per_cm / downsample, px_per_cm / downsample),
                resolutionunit="CENTIMETER",
                description=f"slide2expr demo slide; level downsample {downsample}; mpp {mpp}",
            )
            if max(level.shape[:2]) <= 512:
                break
            level = np.asarray(Image.fromarray(level).reduce(2))
            downsample *= 2


def _spots_on_tissue(labels: np.ndarray, spec: DemoSpec) -> pd.DataFrame:
    pitch = spec.spot_pitch_um / spec.mpp
    radius_lab = spec.spot_diameter_um / spec.mpp / 2 / LABEL_DOWNSAMPLE
    n_lab = labels.shape[0]
    yy, xx = np.mgrid[0:n_lab, 0:n_lab]
    rows = []
    centres = np.arange(pitch / 2, spec.size_px, pitch)
    for j, cy in enumerate(centres):
        for i, cx in enumerate(centres):
            disk = (xx - cx / LABEL_DOWNSAMPLE) ** 2 + (yy - cy / LABEL_DOWNSAMPLE) ** 2 <= radius_lab ** 2
            under = labels[disk]
            tissue = float(np.mean(under > 0))
            if tissue < 0.5:
                continue
            rows.append({
                "spot_id": f"{i}x{j}", "pixel_x": round(float(cx), 2), "pixel_y": round(float(cy), 2),
                "tumour_fraction": float(np.mean(under == TUMOUR)),
                "stroma_fraction": float(np.mean(under == STROMA)),
            })
    return pd.DataFrame(rows)


def _rates(genes: pd.DataFrame, tumour: np.ndarray, stroma: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    base = genes["base_rate"].to_numpy()[None, :]
    effect = genes["effect"].to_numpy()[None, :]
    kind = genes["kind"].to_numpy()
    driver = np.where(kind == "tumour", 1.0, 0.0)[None, :] * tumour[:, None] + \
        np.where(kind == "stroma", 1.0, 0.0)[None, :] * stroma[:, None]
    noise = np.where(kind == "noise", 1.0, 0.0)[None, :] * rng.normal(0, 0.6, size=(len(tumour), len(kind)))
    rates = base * np.exp(effect * driver + noise)
    # The compensator takes up whatever the planted genes leave of a fixed total, so a
    # spot's library composition outside the planted genes does not depend on the tissue:
    # after CP10k the noise and housekeeping genes stay independent of region (without it
    # they pick up r ~ 0.2 from the planted genes' share of the library).
    planted = np.isin(kind, ["tumour", "stroma"])
    ceiling = 1.2 * float((base[0, planted] * np.exp(effect[0, planted])).sum())
    rates[:, kind == "compensator"] = (ceiling - rates[:, planted].sum(axis=1))[:, None]
    return rates


def _spot_counts(spots: pd.DataFrame, genes: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    rates = _rates(genes, spots["tumour_fraction"].to_numpy(), spots["stroma_fraction"].to_numpy(), rng)
    depth = rng.uniform(0.6, 1.4, size=(len(spots), 1))
    counts = rng.poisson(rates * depth)
    return pd.DataFrame(counts, index=pd.Index(spots["spot_id"], name="spot_id"),
                        columns=genes["gene"].to_list())


def _bulk_counts(sample: str, tumour: float, genes: pd.DataFrame, rng: np.random.Generator) -> dict:
    rates = _rates(genes, np.array([tumour]), np.array([1.0 - tumour]), rng)[0] * 500
    return {"sample_id": sample, **dict(zip(genes["gene"], rng.poisson(rates).tolist(), strict=True))}
