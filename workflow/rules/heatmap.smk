# Heatmap stage: each trained head applied to every grid tile of every slide, drawn for
# pathologists. Per sample and head, one job (features + model -> tile map, PNG overlays,
# QuPath GeoJSON):
#   heatmaps/{head}/{sample}.h5ad, {sample}.geojson, {sample}/{gene}.png
# With heatmap.shared_scale every slide's map is needed before any is drawn (one colour scale
# per gene across the cohort), so the job splits in two around heatmap_scale:
#   heatmap_map (tile map) -> heatmap_scale (heatmaps/{head}/scale.tsv) -> heatmap (draw)
# Config: the `heatmap` section and tiling.tissue (workflow/schemas/, config/README.md).

import re

HEATMAP = config["heatmap"]
# {sample} is one of the sheet's IDs, so "{sample}" (the PNG folder) never matches
# "{sample}.h5ad", "{sample}.geojson" or "scale.tsv" beside it.
HEATMAP_WILDCARDS = {
    "sample": "|".join(re.escape(s) for s in SAMPLE_IDS),
    "head": r"[A-Za-z0-9_-]+",
}
HEATMAP_CONFIG = config_json("heatmap", "tiling.tissue", "default_slide_mpp")


def _fmt(pattern, wildcards):
    """Fill {head}, {sample} and (in an encoder sweep) {encoder} from the job's wildcards."""
    return pattern.format(**dict(wildcards.items()))


def heatmap_model_inputs(wildcards):
    """The slide's grid features and the trained head (its predictions file is the train
    stage's last output, so the models folder is complete)."""
    return {
        "features": f"{RESULTS}/features/{join_encoder(wildcards)}/grid/{wildcards.sample}.h5",
        "trained": _fmt(f"{ENC_RESULTS}/predictions/{{head}}.h5ad", wildcards),
    }


def heatmap_draw_inputs(wildcards):
    """What drawing needs: the slide, the report's genes (unless the config lists them), the
    spot predictions (spot mode: measured vs predicted) and the cohort scale."""
    inputs = {"slide": sample_value(wildcards.sample, "slide")}
    if not HEATMAP.get("genes"):
        inputs["report"] = _fmt(f"{ENC_RESULTS}/report/{{head}}/genes.tsv", wildcards)
    if MODE == "spot":
        inputs["predictions"] = _fmt(f"{ENC_RESULTS}/predictions/{{head}}.h5ad", wildcards)
    if HEATMAP["shared_scale"]:
        inputs["scale"] = _fmt(f"{ENC_RESULTS}/heatmaps/{{head}}/scale.tsv", wildcards)
    return inputs


def heatmap_draw_args(wildcards, input):
    return " ".join(f"--{name} {input[name]}" for name in ("report", "predictions", "scale")
                    if name in input.keys())


HEATMAP_OUTPUT = {
    "geojson": f"{ENC_RESULTS}/heatmaps/{{head}}/{{sample}}.geojson",
    "pngs": directory(f"{ENC_RESULTS}/heatmaps/{{head}}/{{sample}}"),
}
HEATMAP_MAP = f"{ENC_RESULTS}/heatmaps/{{head}}/{{sample}}.h5ad"
HEATMAP_LOG = f"{RESULTS}/logs/heatmap/{ENC_TAG}{{head}}/{{sample}}.log"
HEATMAP_BENCH = f"{RESULTS}/benchmarks/heatmap/{ENC_TAG}{{head}}/{{sample}}.tsv"

if not HEATMAP["shared_scale"]:

    rule heatmap:
        input:
            unpack(heatmap_model_inputs),
            unpack(heatmap_draw_inputs),
        output:
            tile_map=HEATMAP_MAP,
            **HEATMAP_OUTPUT,
        wildcard_constraints:
            **HEATMAP_WILDCARDS,
        params:
            models=lambda w: _fmt(f"{ENC_RESULTS}/models/{{head}}", w),
            out=lambda w, output: os.path.dirname(output.geojson),
            args=heatmap_draw_args,
            cfg=HEATMAP_CONFIG,
        log:
            HEATMAP_LOG,
        benchmark:
            HEATMAP_BENCH
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        conda:
            CONDA_ENV
        shell:
            "slide2expr heatmap {input.features} --model-dir {params.models} "
            "--slide {input.slide} --sample-id {wildcards.sample} -o {params.out} "
            "{params.args} --threads {threads} --config-json {params.cfg} > {log} 2>&1"

else:

    rule heatmap_map:
        input:
            unpack(heatmap_model_inputs),
        output:
            HEATMAP_MAP,
        wildcard_constraints:
            **HEATMAP_WILDCARDS,
        params:
            models=lambda w: _fmt(f"{ENC_RESULTS}/models/{{head}}", w),
            out=lambda w, output: os.path.dirname(output[0]),
        log:
            f"{RESULTS}/logs/heatmap_map/{ENC_TAG}{{head}}/{{sample}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/heatmap_map/{ENC_TAG}{{head}}/{{sample}}.tsv"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        conda:
            CONDA_ENV
        shell:
            "slide2expr heatmap {input.features} --model-dir {params.models} -o {params.out} "
            "--sample-id {wildcards.sample} --map-only --threads {threads} > {log} 2>&1"

    def heatmap_scale_inputs(wildcards):
        maps = [_fmt(f"{ENC_RESULTS}/heatmaps/{{head}}/{s}.h5ad", wildcards) for s in SAMPLE_IDS]
        inputs = {"maps": maps}
        if not HEATMAP.get("genes"):
            inputs["report"] = _fmt(f"{ENC_RESULTS}/report/{{head}}/genes.tsv", wildcards)
        return inputs

    rule heatmap_scale:
        input:
            unpack(heatmap_scale_inputs),
        output:
            f"{ENC_RESULTS}/heatmaps/{{head}}/scale.tsv",
        wildcard_constraints:
            head=HEATMAP_WILDCARDS["head"],
        params:
            report=lambda w, input: f"--report {input.report}" if "report" in input.keys() else "",
            cfg=config_json("heatmap"),
        log:
            f"{RESULTS}/logs/heatmap_scale/{ENC_TAG}{{head}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/heatmap_scale/{ENC_TAG}{{head}}.tsv"
        threads: 1
        resources:
            mem_mb=8000,
            runtime=30,
        conda:
            CONDA_ENV
        shell:
            "slide2expr heatmap-scale {input.maps} -o {output} {params.report} "
            "--config-json {params.cfg} > {log} 2>&1"

    rule heatmap:
        input:
            unpack(heatmap_draw_inputs),
            tile_map=HEATMAP_MAP,
        output:
            **HEATMAP_OUTPUT,
        wildcard_constraints:
            **HEATMAP_WILDCARDS,
        params:
            out=lambda w, output: os.path.dirname(output.geojson),
            args=heatmap_draw_args,
            cfg=HEATMAP_CONFIG,
        log:
            HEATMAP_LOG,
        benchmark:
            HEATMAP_BENCH
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        conda:
            CONDA_ENV
        shell:
            "slide2expr heatmap {input.tile_map} --slide {input.slide} -o {params.out} "
            "{params.args} --config-json {params.cfg} > {log} 2>&1"
