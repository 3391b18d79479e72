# Shared by every stage: config validation, the sample sheet, and the list of final targets.

import hashlib
import itertools
import json
import os
import re
import shlex
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from slide2expr.errors import InputError
from slide2expr.inputs.samples import read_sample_sheet
from slide2expr.settings import (
    check_heads_fit_mode,
    check_run_config,
    put_interpreter_on_path,
    put_openseadragon_in_env,
)

# The checkout holding the Snakefile (the repository root), and the config schemas in its
# workflow/schemas/; the CLI validates with the same files.
REPO = Path(workflow.basedir)
SCHEMAS = REPO / "workflow" / "schemas"


# The top level and each stage's section against their schemas (the CLI uses the same files):
# --config strings ("32", "false") become the schema's types, the documented defaults are
# filled in, and a problem stops the run with one line naming the key (slide2expr.settings).
try:
    check_run_config(config)
except InputError as _error:
    raise WorkflowError(_error.one_line()) from None

# Every rule runs the slide2expr CLI. With `--sdm conda`, Snakemake builds this environment
# once per node setup; it pip-installs this checkout from ${SLIDE2EXPR_SRC}, which defaults to
# the checkout holding this workflow (see envs/slide2expr.yaml and docs/cluster.md).
CONDA_ENV = str(REPO / "envs" / "slide2expr.yaml")
os.environ.setdefault("SLIDE2EXPR_SRC", str(REPO))
# Rules call `slide2expr`: the folder of the interpreter Snakemake runs in (the venv) goes first
# on PATH, so that `.venv/bin/snakemake` works without activating the venv.
put_interpreter_on_path()
# OpenSeadragon as `npm ci` installed it in this checkout (scripts/setup.sh): jobs whose
# slide2expr is a non-editable install (conda environments on cluster nodes) find it here.
put_openseadragon_in_env(REPO / "node_modules" / "openseadragon" / "build" / "openseadragon")

MODE = config["mode"]  # "spot" or "bulk"
RESULTS = "results"
# Files made by the demo_data job do not exist before the first run, so they are checked later.
# Relative paths in the sheet are taken relative to `data_root` when set (else the workdir).
DATA_ROOT = config.get("data_root")
# train.genes.list may start with "{data_root}/": a gene list shipped with the data moves with
# it, so pointing a config at another copy of the data takes only --config data_root=...
_GENE_LIST = config["train"].get("genes", {}).get("list")
if _GENE_LIST and "{data_root}" in _GENE_LIST:
    if not DATA_ROOT:
        raise ValueError(
            f"config: train.genes.list {_GENE_LIST!r} uses {{data_root}} but data_root is not "
            "set; set data_root (e.g. --config data_root=/data/her2st) or give the list's path"
        )
    config["train"]["genes"]["list"] = _GENE_LIST.replace("{data_root}", str(DATA_ROOT).rstrip("/"))
# Pseudo-bulk (config `pseudobulk`, rules/pseudobulk.smk): windows of a spot-mode sheet's
# sections become the run's region samples. Their sheet is the output of the pseudobulk
# checkpoint, so one run writes it and then plans the regions' jobs: every use of the sample
# sheet goes through sample_table(), which waits for the checkpoint (see config/README.md).
PSEUDOBULK = config["pseudobulk"]  # validated with the other sections (check_run_config)
PSEUDOBULK_ON = bool(PSEUDOBULK.get("spots_samples"))
PSEUDOBULK_OUT = {
    "sheet": f"{RESULTS}/pseudobulk/samples.tsv",
    "expression": f"{RESULTS}/pseudobulk/expression.tsv",
}
# The ceiling of the map-versus-spots score (pseudobulk.ceiling_config): a spot-mode run of
# the same sections in results/ceiling/ (rule ceiling); the report reads its first head's
# out-of-fold predictions.
CEILING_DIR = f"{RESULTS}/ceiling"


def _ceiling_head():
    """The first head of the ceiling config (its schema defaults filled in)."""
    import yaml

    ceiling = yaml.safe_load(Path(PSEUDOBULK["ceiling_config"]).read_text()) or {}
    try:
        check_run_config(ceiling, source=PSEUDOBULK["ceiling_config"])
    except InputError as error:
        raise WorkflowError(error.one_line()) from None
    return ceiling["train"]["heads"][0]


CEILING_PREDICTIONS = (
    f"{CEILING_DIR}/{RESULTS}/predictions/{_ceiling_head()}.h5ad"
    if PSEUDOBULK_ON and PSEUDOBULK.get("ceiling_config")
    else None
)
if PSEUDOBULK_ON:
    _wanted = {"samples": PSEUDOBULK_OUT["sheet"], "join.expression": PSEUDOBULK_OUT["expression"]}
    _given = {"samples": config["samples"], "join.expression": config["join"].get("expression")}
    if MODE != "bulk" or _given != _wanted:
        raise ValueError(
            f"config: pseudobulk.spots_samples is set, so set mode: bulk, samples: "
            f"{_wanted['samples']} and join.expression: {_wanted['join.expression']} (the "
            f"pseudobulk rule's outputs); got mode {MODE}, {_given}"
        )


def _read_samples():
    table = read_sample_sheet(
        config["samples"], mode=MODE, check_files=not config.get("demo_data", False), root=DATA_ROOT
    )
    validate(table.reset_index(drop=True), str(SCHEMAS / "samples.schema.yaml"), set_default=False)
    return table


# A sheet of your own is read once, as the workflow is parsed; a pseudo-bulk region sheet when
# the checkpoint has written it (sample_table), and again whenever it is rewritten.
SAMPLES = None if PSEUDOBULK_ON else _read_samples()
_REGION_SHEET = {"stamp": None, "table": None}


def sample_table():
    """The sample sheet. With pseudo-bulk on, the checkpoint's region sheet: before the
    checkpoint has run, asking for it raises Snakemake's IncompleteCheckpointException, and
    Snakemake runs the checkpoint and asks again (only inside input functions and params)."""
    if not PSEUDOBULK_ON:
        return SAMPLES
    sheet = Path(checkpoints.pseudobulk.get().output.sheet)
    stamp = (sheet.stat().st_mtime_ns, sheet.stat().st_size)
    if _REGION_SHEET["stamp"] != stamp:
        _REGION_SHEET.update(stamp=stamp, table=_read_samples())
    return _REGION_SHEET["table"]


def sample_ids():
    """The sheet's sample IDs (see sample_table)."""
    return list(sample_table().index)


# parse-time uses (the demo's files); empty while regions come from the checkpoint
SAMPLE_IDS = [] if PSEUDOBULK_ON else list(SAMPLES.index)
# The tiling that holds the training units: spots in spot mode, the tissue grid in bulk mode.
UNIT_TILING = "spots" if MODE == "spot" else "grid"

# Context tilings (tiling.context_um, spot mode): ctx{um} windows centred on each spot,
# embedded by the extract stage and joined as obsm['X_{encoder}_ctx{um}'].
CONTEXT_TILINGS = (
    [f"ctx{int(um)}" for um in config["tiling"].get("context_um") or []] if MODE == "spot" else []
)

# Encoder sweep (extract.encoders). With one encoder (the default) the join, train, report
# and heatmap outputs sit directly under results/ (dataset.h5ad, report/{head}/...). With
# several, each encoder's go under results/{encoder}/ (results/{encoder}/dataset.h5ad,
# results/{encoder}/report/{head}/...), and their logs and benchmarks under .../{encoder}/.
# Tiles are shared; features are per encoder anyway. Rules write paths as
# f"{ENC_RESULTS}/dataset.h5ad" and f"{RESULTS}/logs/join/{ENC_TAG}join.log".
SWEEP_ENCODERS = list(config["extract"].get("encoders") or ["efficientnet_lite0"])
SWEEP = len(SWEEP_ENCODERS) > 1
ENC_RESULTS = f"{RESULTS}/{{encoder}}" if SWEEP else RESULTS
ENC_TAG = "{encoder}/" if SWEEP else ""


def given_cores():
    """``--cores``, or None where none is needed and none was given (``snakemake --report``,
    ``--lint``): ``workflow.cores`` itself refuses then."""
    try:
        return workflow.cores
    except WorkflowError:
        return None


# Settings every stage reads.
EXTRACT = config["extract"]
# Threads of one extract job: up to 4, but never more than half the cores given to Snakemake,
# so at least two slides embed side by side (their start-up, ~5 s of imports and model
# build, overlaps; on the CPU two 1-thread jobs beat one 2-thread job: the demo's 12 extract
# jobs took 110 s in turn, docs/benchmarks.md). A profile's set-threads still overrides it.
EXTRACT_THREADS = max(1, min(4, (given_cores() or 2) // 2))
JOIN = config["join"]
TRAIN = config["train"]
REPORT = config["report"]
HEATMAP = config["heatmap"]
HEADS = list(TRAIN["heads"])
# Which heads fit which mode is checked once, by the package (slide2expr.settings).
check_heads_fit_mode(HEADS, MODE)
# The input blocks of each head (train.head_inputs, else train.inputs). A head with context
# blocks paints heatmaps from the same blocks built on the grid tiles
# (slide2expr.predict.inputs): ctx{um} from grid_ctx{um} windows centred on each grid tile
# (tiles/grid_ctx{um}/, extracted once like any tiling), nbr{r} and slide from the grid
# features (slide: the dataset's vector for a slide with spots).
HEAD_INPUTS = {
    h: list((TRAIN.get("head_inputs") or {}).get(h) or TRAIN.get("inputs") or ["spot"])
    for h in HEADS
}


def grid_context_tilings(head):
    """The grid_ctx{um} tilings a head's heatmaps need (none for a spot-only head)."""
    return [f"grid_{b}" for b in HEAD_INPUTS.get(head, []) if re.fullmatch(r"ctx[0-9]+", b)]


def planned_tilings():
    """The tilings the run embeds for every slide, in the one-pass extract job: the training
    units (spots or grid), the context windows (ctx{um}), and with heatmaps the grid and
    the grid context windows of the heads that paint maps."""
    tilings = [UNIT_TILING, *CONTEXT_TILINGS]
    if config["heatmap"]["enabled"]:
        tilings.append("grid")
        for head in HEADS:
            tilings += grid_context_tilings(head)
    return list(dict.fromkeys(tilings))


# One extract job per slide and encoder embeds all of these (rule extract); any other tiling
# asked for by name (a heatmap target with heatmaps off) has a job of its own (extract_tiling).
EXTRACT_TILINGS = planned_tilings()


# The encoder whose features are joined: join.encoder, else the first of extract.encoders.
# In an encoder sweep (several extract.encoders) each encoder is joined: results/{encoder}/.
JOIN_ENCODER = JOIN.get("encoder") or SWEEP_ENCODERS[0]
if MODE == "bulk" and not JOIN.get("expression"):
    raise ValueError(
        "config: join.expression (the bulk expression matrix) is required in bulk mode"
    )


def expand_encoders(pattern, **wildcards):
    """``expand`` over the sweep's encoders too (duplicates removed, order kept)."""
    return list(dict.fromkeys(expand(pattern, encoder=SWEEP_ENCODERS, **wildcards)))


def sample_value(sample, column, default=None):
    """A sample sheet cell, or ``default`` when the column is absent or the cell empty."""
    table = sample_table()
    if column not in table.columns:
        return default
    value = table.loc[sample, column]
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return default
    return value


def cli_option(flag, value):
    """``--flag value`` for the shell command, or nothing when value is None."""
    return "" if value is None else f"{flag} {value}"


def default_mpp_option():
    """``--default-mpp`` with the config's ``default_slide_mpp``, or nothing: the one way the
    fallback resolution reaches every command that opens a slide (tile, heatmap, viewer)."""
    return cli_option("--default-mpp", config["default_slide_mpp"])


def config_json(*keys):
    """The config sections a command reads, as one shell-quoted JSON object: the one way rules
    pass settings (``--config-json``). A dotted key takes a subsection (``tiling.tissue``);
    ``"*"`` takes the whole config (the manifest's provenance only). Only these keys are in
    the job's params, so editing another key does not rerun the job (tests/test_config_slices.py
    checks it for every key of the schemas)."""
    if "*" in keys:
        chosen = config
    else:
        chosen = {}
        for key in keys:
            *parents, leaf = key.split(".")
            node, value = chosen, config
            for part in parents:
                node, value = node.setdefault(part, {}), value[part]
            node[leaf] = value[leaf]
    # keys sorted: the same settings give the same params whatever order a config file or
    # --config wrote them in (a job reruns when its params change)
    return shlex.quote(json.dumps(chosen, default=str, sort_keys=True))


def get_final_output(manifest=True):
    """Every final target of the run, in stage order; `rule all` requests these. The manifest
    is written last, from all the others (``manifest=False`` lists what it waits for).
    Call it inside input functions only: with pseudo-bulk on it waits for the region sheet."""
    ids = sample_ids()
    heads = list(config["train"]["heads"])
    targets = expand(f"{RESULTS}/qc/{{sample}}.png", sample=ids)
    targets += expand(
        f"{RESULTS}/features/{{encoder}}/{UNIT_TILING}/{{sample}}.h5",
        encoder=SWEEP_ENCODERS,
        sample=ids,
    )
    targets += expand_encoders(f"{ENC_RESULTS}/dataset.h5ad")
    targets += expand_encoders(f"{ENC_RESULTS}/predictions/{{head}}.h5ad", head=heads)
    targets += expand_encoders(f"{ENC_RESULTS}/report/{{head}}/index.html", head=heads)
    targets.append(f"{RESULTS}/report/compare.tsv")
    if config["heatmap"]["enabled"]:
        for pattern in ("{sample}.geojson", "{sample}"):
            targets += expand_encoders(
                f"{ENC_RESULTS}/heatmaps/{{head}}/{pattern}", head=heads, sample=ids
            )
        targets += expand_encoders(f"{ENC_RESULTS}/viewer")
    if PSEUDOBULK_ON and PSEUDOBULK.get("ceiling_config"):
        targets.append(CEILING_PREDICTIONS)
    if manifest:
        targets.append(f"{RESULTS}/manifest.json")
    return list(dict.fromkeys(targets))


# -- input functions and parameters, by stage --------------------------------------------------


def tile_inputs(wildcards):
    return sample_tile_inputs(wildcards.sample)


def sample_tile_inputs(sample):
    """What a sample's tiling reads: its slide, and in spot mode its spots and counts."""
    inputs = {"slide": sample_value(sample, "slide")}
    if MODE == "spot":
        inputs["spots"] = sample_value(sample, "spots")
        inputs["counts"] = sample_value(sample, "counts")
    return inputs


def tile_spot_args(wildcards, input, output):
    if MODE != "spot":
        return ""
    return f"--spots {input.spots} --counts {input.counts} --spots-out {output.spots}"


def tile_roi_args(wildcards):
    """``--roi ... --roi-units ...`` for a region sample (the sheet's roi), else nothing."""
    return sample_roi_args(wildcards.sample)


def sample_roi_args(sample):
    roi = sample_value(sample, "roi")
    if roi is None:
        return ""
    units = sample_value(sample, "roi_units", "px")
    return f"--roi {shlex.quote(str(roi))} --roi-units {units}"


# -- regions of a slide (sheet `roi`): one tile job and one extract job per slide -------------
# The region samples that share a slide (and, in spot mode, its spot table) are tiled by one
# tile_regions job and embedded by one extract_regions job per encoder: one slide open, one
# tissue mask, one stain fit and one interpreter and encoder start for all of them (rules in
# tile.smk and extract.smk). They write into results/tiles/regions/{slide}/ and
# results/features/{encoder}/regions/{slide}/; the region_tiles and region_features jobs
# (local, no process of their own) link each region's files to the usual per-sample paths.
_REGION_GROUPS = {"table": None, "groups": {}}


def region_groups():
    """``{slide: [region sample IDs]}`` in sheet order: the region rows grouped by what their
    tile job reads (slide, mpp, spots and counts), each group named after its slide's file
    (with a short hash of the group where two groups would share a name)."""
    table = sample_table()
    if _REGION_GROUPS["table"] is not table:
        _REGION_GROUPS.update(table=table, groups=_group_regions(table))
    return _REGION_GROUPS["groups"]


def _group_regions(table):
    keys = {}
    for sample in table.index:
        if sample_value(sample, "roi") is None:
            continue
        key = tuple(str(sample_value(sample, c, "")) for c in ("slide", "mpp", "spots", "counts"))
        keys.setdefault(key, []).append(sample)
    stems = [re.sub(r"[^A-Za-z0-9._-]", "_", Path(key[0]).stem).lstrip(".") for key in keys]
    groups = {}
    for key, stem in zip(keys, stems):
        name = stem or "slide"
        if stems.count(stem) > 1:
            name = f"{name}-{hashlib.sha1(repr(key).encode()).hexdigest()[:8]}"
        groups[name] = keys[key]
    return groups


def region_slide(sample):
    """The name of the group (slide) of a region sample."""
    for slide, samples in region_groups().items():
        if sample in samples:
            return slide
    raise WorkflowError(f"sample {sample} has no roi: it is tiled on its own (rule tile)")


def _region_ids_at_parse_time():
    """The region samples of a sheet of your own; with pseudo-bulk on every sample is a
    region (known only after the checkpoint), without a roi column none is."""
    if PSEUDOBULK_ON:
        return None
    if "roi" not in SAMPLES.columns:
        return []
    return [s for s in SAMPLES.index if sample_value(s, "roi") is not None]


_REGION_IDS = _region_ids_at_parse_time()
# Whether the run has region samples, and the {sample} wildcard they match (any name with
# pseudo-bulk on: every sample of its sheet is a region).
HAS_REGIONS = _REGION_IDS is None or bool(_REGION_IDS)
REGION_SAMPLE_WILDCARD = (
    r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
    if _REGION_IDS is None
    else "|".join(re.escape(s) for s in _REGION_IDS)
)
SLIDE_GROUP_DIR = {
    "tiles": f"{RESULTS}/tiles/regions/{{slide}}",
    "features": f"{RESULTS}/features/{{encoder}}/regions/{{slide}}",
}


def tile_regions_inputs(wildcards):
    """The slide (and spot table and counts) of a slide's regions."""
    first = region_groups()[wildcards.slide][0]
    return sample_tile_inputs(first)


def tile_regions_args(wildcards, output):
    """Per region: ``--sample-id``, ``--roi``, ``--roi-units``, ``--out``, ``--qc`` (and
    ``--spots-out``), into the slide's folder (output)."""
    args = []
    for sample in region_groups()[wildcards.slide]:
        args.append(f"--sample-id {sample}")
        args.append(sample_roi_args(sample))
        args.append(f"-o {output}/grid/{sample}.h5 --qc {output}/qc/{sample}.png")
        if MODE == "spot":
            args.append(f"--spots-out {output}/spots/{sample}.h5")
    return " ".join(args)


def tile_regions_spot_args(wildcards, input):
    return f"--spots {input.spots} --counts {input.counts}" if MODE == "spot" else ""


def tile_regions_mpp_arg(wildcards):
    return cli_option("--mpp", sample_value(region_groups()[wildcards.slide][0], "mpp"))


def region_tiles_input(wildcards):
    return SLIDE_GROUP_DIR["tiles"].format(slide=region_slide(wildcards.sample))


def region_tiles_sources(wildcards, input, output):
    """The slide folder's files of one region, in the order of the job's outputs."""
    names = {
        "spots": f"spots/{wildcards.sample}.h5",
        "grid": f"grid/{wildcards.sample}.h5",
        "qc": f"qc/{wildcards.sample}.png",
    }
    return [f"{input}/{names[key]}" for key in output.keys()]


def extract_regions_tiles(wildcards):
    """The tiles of every planned tiling of every region of the slide (region-major)."""
    samples = region_groups()[wildcards.slide]
    return [f"{RESULTS}/tiles/{t}/{s}.h5" for s in samples for t in EXTRACT_TILINGS]


def extract_regions_inputs(wildcards):
    """The regions' tiles, the encoder's weights and the stain reference (extract_inputs)."""
    return {"tiles": extract_regions_tiles(wildcards), **encoder_inputs(wildcards.encoder)}


def extract_regions_outs(wildcards):
    """``-o FILE`` per tiles file: the slide folder's features, in the order of the tiles."""
    folder = SLIDE_GROUP_DIR["features"].format(**dict(wildcards.items()))
    samples = region_groups()[wildcards.slide]
    return " ".join(
        f"-o {shlex.quote(f'{folder}/{t}/{s}.h5')}" for s in samples for t in EXTRACT_TILINGS
    )


def region_features_input(wildcards):
    slide = region_slide(wildcards.sample)
    folder = SLIDE_GROUP_DIR["features"].format(encoder=wildcards.encoder, slide=slide)
    return f"{folder}.done"


def region_features_sources(wildcards, input, output):
    folder = str(input)[: -len(".done")]
    return [f"{folder}/{t}/{wildcards.sample}.h5" for t in output.keys()]


def link_files(sources, targets, made_by):
    """Shell: hard-link (else copy) each source to its target, then touch the target so that it
    is newer than the job's input (the slide folder's flag or timestamp). A source that is
    missing (someone deleted the slide folder's files but kept ``made_by``) stops the job with
    one line naming the file and the fix, before anything is linked."""
    missing = " && ".join(
        f"{{ [ -e {shlex.quote(str(a))} ] || {{ echo {shlex.quote(missing_source_line(a, made_by))}"
        " >&2; exit 1; }; }"
        for a in sources
    )
    links = " && ".join(
        f"{{ ln -f {shlex.quote(str(a))} {shlex.quote(str(b))} 2>/dev/null || "
        f"cp -f {shlex.quote(str(a))} {shlex.quote(str(b))}; }} && touch {shlex.quote(str(b))}"
        for a, b in zip(sources, targets, strict=True)
    )
    return f"{missing} && {links}"


def missing_source_line(source, made_by):
    return (
        f"error: {source}: the slide's region file is missing although {made_by} marks the "
        f"slide's regions as made; fix: delete {made_by} and rerun, so the slide's regions are "
        "made again"
    )


def extract_inputs(wildcards):
    """The tiles of every planned tiling of the slide (in EXTRACT_TILINGS order), or of the
    one tiling of an extract_tiling job; the encoder's weights; the stain reference."""
    tilings = [wildcards.tiling] if "tiling" in wildcards.keys() else EXTRACT_TILINGS
    inputs = {"tiles": [f"{RESULTS}/tiles/{t}/{wildcards.sample}.h5" for t in tilings]}
    return {**inputs, **encoder_inputs(wildcards.encoder)}


def encoder_inputs(encoder):
    """The encoder's weights and the stain reference, where the config names them."""
    inputs = {}
    weights = (EXTRACT.get("weights") or {}).get(encoder)
    if weights:
        inputs["weights"] = weights
    if EXTRACT.get("stain_normalize", "none") != "none" and EXTRACT.get("stain_reference"):
        inputs["stain_reference"] = EXTRACT["stain_reference"]  # a new reference re-extracts
    return inputs


def extract_weights_arg(wildcards, input):
    return f"--weights {input.weights}" if "weights" in input.keys() else ""


def extract_out_args(wildcards, output):
    """``-o FILE`` per output, in the order of the tiles files."""
    return " ".join(f"-o {shlex.quote(str(f))}" for f in output)


def join_encoder(wildcards):
    return wildcards.encoder if SWEEP else JOIN_ENCODER


def join_inputs(wildcards):
    ids = sample_ids()
    inputs = {
        "samples": config["samples"],
        "features": expand(
            f"{RESULTS}/features/{join_encoder(wildcards)}/{UNIT_TILING}/{{sample}}.h5",
            sample=ids,
        ),
    }
    for tiling in CONTEXT_TILINGS:
        inputs[tiling] = expand(
            f"{RESULTS}/features/{join_encoder(wildcards)}/{tiling}/{{sample}}.h5",
            sample=ids,
        )
    if MODE == "spot":
        inputs["counts"] = [sample_value(s, "counts") for s in ids]
        inputs["spots"] = [sample_value(s, "spots") for s in ids]
        # the join reads each slide's thumbnail for uns['spatial'] (scanpy/squidpy plots)
        inputs["slides"] = [sample_value(s, "slide") for s in ids]
    else:
        inputs["expression"] = JOIN["expression"]
    return inputs


def compare_summaries():
    """(encoder, head, summary.json) for every combination, encoders first."""
    return [
        (enc, head, f"{ENC_RESULTS}/report/{head}/summary.json".format(encoder=enc))
        for enc, head in itertools.product(SWEEP_ENCODERS, HEADS)
    ]


def fill_wildcards(pattern, wildcards):
    """Fill {head}, {sample} and (in an encoder sweep) {encoder} from the job's wildcards."""
    return pattern.format(**dict(wildcards.items()))


def heatmap_model_inputs(wildcards):
    """The slide's grid features and the trained head (its predictions file is the train
    stage's last output, so the models folder is complete); for a head with context inputs
    also its grid_ctx{um} features and (slide block, spot mode) the dataset, whose slide
    vector a slide with spots gets."""
    features = f"{RESULTS}/features/{join_encoder(wildcards)}/{{tiling}}/{wildcards.sample}.h5"
    inputs = {
        "features": features.format(tiling="grid"),
        "trained": fill_wildcards(f"{ENC_RESULTS}/predictions/{{head}}.h5ad", wildcards),
    }
    for tiling in grid_context_tilings(wildcards.head):
        inputs[tiling] = features.format(tiling=tiling)
    if MODE == "spot" and "slide" in HEAD_INPUTS.get(wildcards.head, []):
        inputs["dataset"] = fill_wildcards(f"{ENC_RESULTS}/dataset.h5ad", wildcards)
    return inputs


def heatmap_dataset_arg(wildcards, input):
    return f"--dataset {input.dataset}" if "dataset" in input.keys() else ""


def heatmap_report_input(wildcards):
    """The report's genes.tsv, unless the config lists the genes to draw."""
    if HEATMAP.get("genes"):
        return {}
    return {"report": fill_wildcards(f"{ENC_RESULTS}/report/{{head}}/genes.tsv", wildcards)}


def heatmap_draw_inputs(wildcards):
    """What drawing needs: the slide, the report's genes, the spot predictions (spot mode:
    measured vs predicted) and the cohort scale."""
    inputs = {"slide": sample_value(wildcards.sample, "slide"), **heatmap_report_input(wildcards)}
    if MODE == "spot":
        inputs["predictions"] = fill_wildcards(
            f"{ENC_RESULTS}/predictions/{{head}}.h5ad", wildcards
        )
    if HEATMAP["shared_scale"]:
        inputs["scale"] = fill_wildcards(f"{ENC_RESULTS}/heatmaps/{{head}}/scale.tsv", wildcards)
    return inputs


def heatmap_draw_args(wildcards, input):
    return " ".join(
        f"--{name} {input[name]}"
        for name in ("report", "predictions", "scale")
        if name in input.keys()
    )


def heatmap_scale_inputs(wildcards):
    ids = sample_ids()
    maps = [fill_wildcards(f"{ENC_RESULTS}/heatmaps/{{head}}/{s}.h5ad", wildcards) for s in ids]
    return {"maps": maps, **heatmap_report_input(wildcards)}


def viewer_inputs(wildcards):
    """Every slide's tile map of the first head, the slides, the report's genes (r beside each
    name), the spot predictions (spot mode) and the cohort scale."""
    ids = sample_ids()
    head = HEADS[0]
    inputs = {
        "maps": [fill_wildcards(f"{ENC_RESULTS}/heatmaps/{head}/{s}.h5ad", wildcards) for s in ids],
        "slides": [sample_value(s, "slide") for s in ids],
        "report": fill_wildcards(f"{ENC_RESULTS}/report/{head}/genes.tsv", wildcards),
    }
    if MODE == "spot":
        inputs["predictions"] = fill_wildcards(f"{ENC_RESULTS}/predictions/{head}.h5ad", wildcards)
    if HEATMAP["shared_scale"]:
        inputs["scale"] = fill_wildcards(f"{ENC_RESULTS}/heatmaps/{head}/scale.tsv", wildcards)
    return inputs


def viewer_args(wildcards, input):
    ids = sample_ids()
    args = [f"--report {input.report}"]
    args += [f"--slide {shlex.quote(f'{s}={p}')}" for s, p in zip(ids, input.slides)]
    args += [f"--{name} {input[name]}" for name in ("predictions", "scale") if name in input.keys()]
    return " ".join(args)


# {sample} is one of the sheet's IDs, so "{sample}" (a heatmap's PNG folder) never matches
# "{sample}.h5ad", "{sample}.geojson" or "scale.tsv" beside it.
# (Region samples of a pseudo-bulk run are not known when the workflow is parsed: any name.)
HEATMAP_WILDCARDS = {
    "sample": (
        r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
        if PSEUDOBULK_ON
        else "|".join(re.escape(s) for s in SAMPLE_IDS)
    ),
    "head": r"[A-Za-z0-9_-]+",
}
