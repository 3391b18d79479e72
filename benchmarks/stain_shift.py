"""Stain-shift robustness on her2st: the held-out section's H&E perturbed in stain, with and
without Macenko normalisation (``extract.stain_normalize``).

For each held-out section H (``--sections``, leave-one-section-out as in
config/benchmarks/her2st.yaml): H's whole H&E image is perturbed once (fixed seeds), as a
proxy for another lab or scanner:

- ``hed0.3`` / ``hed0.1``: HED shift of strength 0.3 / 0.1 (:func:`slide2expr.extract.stain.random_hed`:
  H and E scaled by 1 +- s and shifted by +- s/5 OD, random signs, seed 0 + the section's index);
- ``reinhard``: Reinhard colour transfer of H onto the next section's colours (C3 -> C4, ...,
  C6 -> C2; statistics of each section's tissue pixels at 4 um/px).

Its spot patches and 300 um / 1 mm context windows are re-extracted from the perturbed image
(the tile stage's tiles files, reused), once as they are (``none``) and once normalised
(``macenko``, the published fixed reference; the perturbed slide's own stains refitted on
its low-resolution read, as the extract stage does). The model is trained on the clean
training sections with the workflow's settings (the ``context`` head and its ridge baseline
on the same inputs: spot, ctx300, ctx1000, nbr300, slide; her2st.yaml's ``train`` section),
once on raw and once on Macenko-normalised features, and predicts the clean and the three
perturbed copies of H in the same run (the copies are held-out units of the one fold, so
training sees none of them). Reported: per-section mean Pearson r over the top-50 genes (by
training mean), all modelled genes and 50 HVG (scanpy seurat on H's observed data).

Reuses what exists: the raw features and the tiles of a finished her2st run
(``--results``); normalised clean features and perturbed features are cached under
``--work``. Extraction runs on the CPU, ``--threads`` cores.

    python benchmarks/stain_shift.py --results RESULTS --data-root DATA/her2st \
        --work /tmp/stain_shift --sections C3 [--costs]

Prints the markdown table and writes WORK/stain_shift.json (and WORK/costs.json with
``--costs`` or ``--costs-only``: extraction seconds per 100 tiles plain, with Macenko and with
one augmentation view, interleaved in one run, and the features file sizes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from slide2expr.contracts.features import read_features
from slide2expr.contracts.tiles import read_tiles
from slide2expr.extract.run import extract_features
from slide2expr.extract.stain import (
    StainNormalizer,
    fit_reinhard,
    hed_perturb,
    random_hed,
    slide_fit_image,
)
from slide2expr.keys import Key

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("C2", "C3", "C4", "C5", "C6")
TILINGS = ("spots", "ctx300", "ctx1000")
BLOCKS = {"spots": "spot", "ctx300": "ctx300", "ctx1000": "ctx1000"}
PERTURBATIONS = ("hed0.3", "hed0.1", "reinhard")
ENCODER = "efficientnet_lite0"
HEAD = "context"
STRIPE_ROWS = 512

log = logging.getLogger("stain_shift")
Image.MAX_IMAGE_PIXELS = None


# -- perturbed images --------------------------------------------------------------------------
def perturbation_fn(kind: str, section: str, data_root: Path):
    """A function uint8 RGB -> uint8 RGB applying ``kind`` to ``section`` (fixed draws)."""
    index = SECTIONS.index(section)
    if kind.startswith("hed"):
        scale, shift = random_hed(float(kind[3:]), np.random.default_rng(index))
        log.info("%s %s: scale %s shift %s", section, kind, scale, shift)
        return lambda rgb: hed_perturb(rgb, scale, shift)
    target = SECTIONS[(index + 1) % len(SECTIONS)]
    fits = [fit_reinhard(slide_fit_image(data_root / f"{s}_HE.jpg", 0.69)[0])
            for s in (section, target)]
    return StainNormalizer("reinhard", reference=fits[1], source=fits[0])


def perturbed_image(section: str, kind: str, *, data_root: Path, work: Path) -> Path:
    """``work/images/{section}_{kind}.png``: the whole H&E perturbed stripe by stripe."""
    out = work / "images" / f"{section}_{kind}.png"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fn = perturbation_fn(kind, section, data_root)
    with Image.open(data_root / f"{section}_HE.jpg") as im:
        rgb = np.asarray(im.convert("RGB"))
    result = np.empty_like(rgb)
    for y in range(0, rgb.shape[0], STRIPE_ROWS):
        result[y:y + STRIPE_ROWS] = fn(rgb[y:y + STRIPE_ROWS])
    tmp = out.with_name(f".{out.name}")
    Image.fromarray(result).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, out)
    return out


# -- features ----------------------------------------------------------------------------------
def features_path(work: Path, method: str, variant: str, tiling: str, section: str) -> Path:
    """Where a cached extraction goes."""
    return work / "features" / method / variant / tiling / f"{section}.h5"


def extract(tiles: Path, out: Path, *, slide: Path | None, method: str, threads: int) -> float:
    """Extract (unless cached); returns the seconds spent (0 when cached)."""
    if out.exists():
        return 0.0
    result = extract_features(tiles, out, encoder=ENCODER, slide=slide, device="cpu",
                              threads=threads, num_workers=0, stain_normalize=method,
                              progress=False)
    return result.seconds


def ensure_features(args: argparse.Namespace) -> None:
    """Every extraction the table needs: clean normalised sections, perturbed held-out ones."""
    for section in SECTIONS:
        for tiling in TILINGS:
            extract(args.results / "tiles" / tiling / f"{section}.h5",
                    features_path(args.work, "macenko", "clean", tiling, section),
                    slide=None, method="macenko", threads=args.threads)
    for section in args.sections:
        for kind in PERTURBATIONS:
            image = perturbed_image(section, kind, data_root=args.data_root, work=args.work)
            for method in ("none", "macenko"):
                for tiling in TILINGS:
                    t = extract(args.results / "tiles" / tiling / f"{section}.h5",
                                features_path(args.work, method, kind, tiling, section),
                                slide=image, method=method, threads=args.threads)
                    log.info("%s %s %s %s: %.0f s", section, kind, method, tiling, t)


def raw_path(args: argparse.Namespace, tiling: str, section: str) -> Path:
    """The finished run's (unnormalised, clean) features."""
    return args.results / "features" / ENCODER / tiling / f"{section}.h5"


def block_rows(path: Path, spot_ids: np.ndarray) -> np.ndarray:
    """The features of ``path`` in the order of ``spot_ids``."""
    fs = read_features(path)
    index = {s: i for i, s in enumerate(fs.spot_ids)}
    return np.asarray(fs.features[[index[s] for s in spot_ids]], dtype=np.float32)


# -- datasets ----------------------------------------------------------------------------------
def fold_dataset(base: Any, args: argparse.Namespace, held: str, method: str) -> Any:
    """The training sections (clean, ``method``) plus clean and perturbed copies of ``held``
    as the one fold's test units (sample IDs ``{held}~{variant}``)."""
    import anndata as ad

    from slide2expr.join.context import add_context

    parts = []
    for section in SECTIONS:
        variants = ["clean", *PERTURBATIONS] if section == held else ["clean"]
        sub = base[base.obs[Key.SAMPLE_ID] == section].copy()
        spot_ids = sub.obs[Key.SPOT_ID].astype(str).to_numpy()
        for variant in variants:
            part = sub.copy()
            for tiling in TILINGS:
                path = (raw_path(args, tiling, section) if method == "none" and variant == "clean"
                        else features_path(args.work, method, variant, tiling, section))
                part.obsm[Key.context(ENCODER, BLOCKS[tiling])] = block_rows(path, spot_ids)
            name = section if variant == "clean" else f"{section}~{variant}"
            part.obs[Key.SAMPLE_ID] = name
            part.obs[Key.PATIENT] = name
            part.obs["split"] = "test" if section == held else "train"
            part.obs_names = [f"{name}_{s}" for s in spot_ids]
            parts.append(part)
    adata = ad.concat(parts, merge="same", uns_merge="first")
    adata.uns = dict(base.uns)
    obsm = {k: np.asarray(v) for k, v in adata.obsm.items()}
    add_context(obsm, encoder=ENCODER, sections=adata.obs[Key.SAMPLE_ID].astype(str).to_numpy(),
                xy_um=obsm[Key.SPATIAL] * 0.69, neighbour_um=[300], slide_mean=True)
    for key, value in obsm.items():
        adata.obsm[key] = value
    return adata


def train_config(data_root: Path, *, ridge_only: bool = False):
    """her2st.yaml's train section (the workflow's settings), validated; ``ridge_only``: the
    head cut to one member and one epoch (its numbers are then meaningless; ridge's are
    exactly the workflow's)."""
    from slide2expr.settings import validate_section
    from slide2expr.train.config import TrainConfig

    config = yaml.safe_load((REPO / "config/benchmarks/her2st.yaml").read_text())
    train = config["train"]
    train["genes"]["list"] = train["genes"]["list"].format(data_root=data_root)
    train["heads"] = [HEAD]
    if ridge_only:
        train["head_settings"][HEAD].update({"ensemble": 1, "max_epochs": 1, "min_epochs": 1})
    return TrainConfig.from_dict(validate_section("train", train, as_flags=False))


def evaluate(pred: Any, held: str) -> dict[str, dict[str, dict[str, float]]]:
    """Per copy of ``held``: mean r of the head and ridge over top-50 / all / HVG."""
    from slide2expr.report.evaluate import select_hvg
    from slide2expr.train.baselines import pearson_columns

    top = np.zeros(pred.n_vars, dtype=bool)
    top[np.argsort(-np.asarray(pred.var["train_mean"]), kind="stable")[:50]] = True
    truth_all = np.asarray(pred.X.toarray() if hasattr(pred.X, "toarray") else pred.X)
    clean = (pred.obs[Key.SAMPLE_ID] == held).to_numpy()
    hvg, _ = select_hvg(truth_all[clean], 50)
    sets = {"top50": top, "all": np.ones(pred.n_vars, dtype=bool), "hvg": hvg}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for variant in ["clean", *PERTURBATIONS]:
        name = held if variant == "clean" else f"{held}~{variant}"
        rows = (pred.obs[Key.SAMPLE_ID] == name).to_numpy()
        truth = truth_all[rows]
        out[variant] = {}
        for model, layer in (("head", Key.PREDICTED), ("ridge", "baseline_ridge")):
            r = pearson_columns(truth, np.asarray(pred.layers[layer])[rows])
            out[variant][model] = {s: float(np.nanmean(r[m])) for s, m in sets.items()}
    return out


def run_fold(base: Any, args: argparse.Namespace, held: str, method: str) -> dict[str, Any]:
    """Train on the clean training sections (features ``method``), predict ``held``'s copies."""
    import anndata as ad

    from slide2expr.train.run import run_training

    out = args.work / "runs" / f"{held}_{method}{'_ridge' if args.ridge_only else ''}"
    if (out / "predictions.h5ad").exists():  # trained before: evaluate only
        return evaluate(ad.read_h5ad(out / "predictions.h5ad"), held)
    adata = fold_dataset(base, args, held, method)
    t0 = time.perf_counter()
    pred = run_training(adata, head=HEAD, config=train_config(args.data_root,
                                                              ridge_only=args.ridge_only),
                        models_dir=out / "models", predictions_path=out / "predictions.h5ad")
    log.info("%s %s: trained in %.0f s", held, method, time.perf_counter() - t0)
    return evaluate(pred, held)


# -- costs -------------------------------------------------------------------------------------
def costs(args: argparse.Namespace, section: str = "C3", repeats: int = 2) -> dict[str, Any]:
    """Extraction seconds per 100 tiles and file size: plain, Macenko, and with one
    augmentation view (``rot90``), interleaved in one run (median of ``repeats``)."""
    tiles = args.results / "tiles" / "spots" / f"{section}.h5"
    n = len(read_tiles(tiles))
    settings = {"none": ("none", ()), "macenko": ("macenko", ()), "view_rot90": ("none", ("rot90",))}
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    size = {}
    for _ in range(repeats):
        for name, (method, views) in settings.items():
            out = args.work / "costs" / name / f"{section}.h5"
            out.unlink(missing_ok=True)
            t0 = time.perf_counter()
            extract_features(tiles, out, encoder=ENCODER, device="cpu", threads=args.threads,
                             num_workers=0, stain_normalize=method, views=views, progress=False)
            seconds[name].append(time.perf_counter() - t0)
            size[name] = out.stat().st_size
    per100 = {m: 100 * float(np.median(s)) / n for m, s in seconds.items()}
    return {"section": section, "n_tiles": n, "seconds": seconds, "s_per_100_tiles": per100,
            "ratio_to_none": {m: per100[m] / per100["none"] for m in per100},
            "file_bytes": size, "load_average": os.getloadavg()}


# -- table -------------------------------------------------------------------------------------
def table(results: dict[str, dict[str, Any]], models: tuple[str, ...] = ("ridge", "head")) -> str:
    """Markdown: one row per (section, model, pipeline), columns clean and the 3 shifts."""
    head = ("| held-out | model | features | clean | HED 0.3 | HED 0.1 | Reinhard -> next |\n"
            "| --- | --- | --- | --- | --- | --- | --- |")
    rows = [head]
    for held, by_method in results.items():
        for model in models:
            for method in by_method:
                cells = []
                for variant in ["clean", *PERTURBATIONS]:
                    r = by_method[method][variant][model]
                    cells.append(f"{r['top50']:.3f} / {r['all']:.3f} / {r['hvg']:.3f}")
                label = "ridge (same inputs)" if model == "ridge" else "context head"
                rows.append(f"| {held} | {label} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True,
                        help="a finished her2st run's results/ (tiles, features, dataset.h5ad)")
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--sections", nargs="+", default=["C3"], choices=SECTIONS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--costs", action="store_true", help="also measure extraction costs")
    parser.add_argument("--costs-only", action="store_true", help="only measure the costs")
    parser.add_argument("--extract-only", action="store_true")
    parser.add_argument("--ridge-only", action="store_true",
                        help="train ridge only (the head for one epoch; its rows are dropped)")
    parser.add_argument("--methods", nargs="+", default=["none", "macenko"],
                        choices=["none", "macenko"],
                        help="train only these pipelines (to run them as parallel processes; "
                             "a pipeline trained before is read back, not retrained)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.costs or args.costs_only:
        info = costs(args)
        (args.work / "costs.json").write_text(json.dumps(info, indent=1))
        print(json.dumps(info))
        if args.costs_only:
            return
    ensure_features(args)
    if args.extract_only:
        return
    import anndata as ad

    base = ad.read_h5ad(args.results / "dataset.h5ad")
    results = {held: {m: run_fold(base, args, held, m) for m in args.methods}
               for held in args.sections}
    name = "stain_shift_ridge.json" if args.ridge_only else "stain_shift.json"
    (args.work / name).write_text(json.dumps(results, indent=1))
    print(table(results, ("ridge",) if args.ridge_only else ("ridge", "head")))


if __name__ == "__main__":
    main()
