"""Which EfficientNet-Lite0 layers help the two-patient model: feature variants of one dataset.

The workflow's ``--until join`` with ``extract.encoders: [efficientnet_lite0_probe]`` writes a
dataset whose every block (spot, ctx300, ctx1000, nbr300, slide) holds, per unit, the spatial
mean of the outputs of stages 1-6 (24, 40, 80, 112, 192, 320 channels), their spatial SDs,
then the 1280-d head (:class:`~slide2expr.extract.encoders.efficientnet_lite.
EfficientNetLiteLayers`). ``variants`` slices those columns into one ``obsm`` family per
variant (``X_{variant}``, ``X_{variant}_ctx300``, ...), so that every variant is trained by
``two_patients.py train ... --set features_key=X_{variant}`` on the same units:

    python benchmarks/encoder_layers.py variants results/dataset.h5ad OUT.h5ad head m2-6+head
    python benchmarks/two_patients.py train OUT.h5ad RUNS/m2-6+head loso_C context \\
        --set features_key=X_m2-6+head
    python benchmarks/encoder_layers.py floors OUT.h5ad m2-6+head   # near-constant columns
    python benchmarks/encoder_layers.py cost efficientnet_lite0 efficientnet_lite0_layers

A variant name joins parts with ``+``: ``head`` (the 1280 columns), ``mA-B`` (means of stages
A to B), ``sA-B`` (their SDs); the parts are concatenated in the order given. Blocks may
differ: ``NAME=PARTS,BLOCK:PARTS`` (e.g. ``ctxmid=head,ctx1000:m2-6+head``: the stages only
in the 1000 um window) names the variant and gives one block other columns.
"""

from __future__ import annotations

import argparse

import numpy as np

from slide2expr.extract.encoders.efficientnet_lite import NUM_FEATURES, STAGE_CHANNELS

#: The probe encoder's tapped stages, in its column order.
PROBE_TAPS = (1, 2, 3, 4, 5, 6)
PROBE_KEY = "X_efficientnet_lite0_probe"


def probe_columns() -> dict[str, np.ndarray]:
    """Column indices of every part of the probe's output: ``m{stage}``, ``s{stage}``, head."""
    columns, start = {}, 0
    for kind in ("m", "s"):
        for stage in PROBE_TAPS:
            width = STAGE_CHANNELS[stage]
            columns[f"{kind}{stage}"] = np.arange(start, start + width)
            start += width
    columns["head"] = np.arange(start, start + NUM_FEATURES)
    return columns


def variant_columns(name: str) -> np.ndarray:
    """The probe columns of a variant name such as ``m2-6+head``."""
    parts, columns = [], probe_columns()
    for part in name.split("+"):
        if part == "head":
            parts.append(columns["head"])
            continue
        kind, _, span = part[0], None, part[1:]
        first, _, last = span.partition("-")
        for stage in range(int(first), int(last or first) + 1):
            parts.append(columns[f"{kind}{stage}"])
    return np.concatenate(parts)


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME=PARTS,BLOCK:PARTS,...`` -> name and parts per block (key ``""``: the other
    blocks); a bare ``PARTS`` is its own name and applies to every block."""
    name, _, rest = spec.rpartition("=")
    per_block = {}
    for entry in rest.split(","):
        block, _, parts = entry.rpartition(":")
        per_block[block] = parts
    return name or rest, per_block


def variants(args: argparse.Namespace) -> None:
    import anndata as ad

    adata = ad.read_h5ad(args.dataset)
    blocks = [k.removeprefix(PROBE_KEY) for k in adata.obsm if k.startswith(PROBE_KEY)]
    for spec in args.variants:
        name, per_block = parse_variant(spec)
        for suffix in blocks:
            parts = per_block.get(suffix.removeprefix("_") or "spot", per_block[""])
            cols = variant_columns(parts)
            adata.obsm[f"X_{name}{suffix}"] = np.ascontiguousarray(
                adata.obsm[f"{PROBE_KEY}{suffix}"][:, cols])
            print(f"{name}{suffix}: {parts}, {len(cols)} columns")
    adata.write_h5ad(args.out)


def floors(args: argparse.Namespace) -> None:
    """Per part of a variant's spot block: SD range and the columns the variance floor treats
    as near constant (below 1% of the block's median SD; train.scaling)."""
    import anndata as ad

    from slide2expr.train.scaling import near_constant

    adata = ad.read_h5ad(args.dataset, backed="r")
    for name in args.variants:
        x = np.asarray(adata.obsm[f"X_{name}"])
        sd = x.std(axis=0)
        flat = near_constant(sd)
        start = 0
        for part in name.split("+"):
            width = len(variant_columns(part))
            sl = slice(start, start + width)
            print(f"{name} {part}: {width} cols, SD median {np.median(sd[sl]):.4f} "
                  f"(min {sd[sl].min():.2e}), near constant {int(flat[sl].sum())}")
            start += width


def cost(args: argparse.Namespace) -> None:
    """CPU seconds per image of each encoder's forward, interleaved in one process.

    Each round embeds the same ``--batch`` random 224 px images with every encoder in turn
    (channels-last, inference mode, one thread: as an extract job), the order alternating
    between rounds, so that load on a shared machine falls on both alike.
    """
    import time

    import torch

    from slide2expr.extract.encoders import get_encoder

    torch.set_num_threads(1)
    encoders = [get_encoder(name) for name in args.encoders]
    modules = [e.module.eval().to(memory_format=torch.channels_last) for e in encoders]
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, 224, 224), dtype=torch.uint8, generator=gen)
    x = encoders[0].preprocessing.normalize(images.contiguous(memory_format=torch.channels_last))
    seconds = np.zeros(len(encoders))
    with torch.inference_mode():
        for module in modules:  # warm-up
            module(x[:2])
        for r in range(args.rounds):
            order = range(len(modules)) if r % 2 == 0 else reversed(range(len(modules)))
            for i in order:
                start = time.process_time()
                modules[i](x)
                seconds[i] += time.process_time() - start
    per_image = seconds / (args.rounds * args.batch)
    for enc, value in zip(encoders, per_image, strict=True):
        print(f"{enc.name}: {enc.embed_dim}-d, {value * 1000:.1f} CPU ms/image, "
              f"ratio to {encoders[0].name} {value / per_image[0]:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("variants", help="write one obsm family per variant")
    p.add_argument("dataset")
    p.add_argument("out")
    p.add_argument("variants", nargs="+")
    p.set_defaults(func=variants)
    p = sub.add_parser("floors", help="SD scales and near-constant columns per part")
    p.add_argument("dataset")
    p.add_argument("variants", nargs="+")
    p.set_defaults(func=floors)
    p = sub.add_parser("cost", help="forward CPU seconds per image, interleaved")
    p.add_argument("encoders", nargs="+")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=10)
    p.set_defaults(func=cost)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
