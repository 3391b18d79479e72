# Heatmap stage: each trained head applied to every grid tile of every slide, drawn for
# pathologists. Per sample and head:
#   heatmap_map   features/{encoder}/grid/{sample}.h5 + models/{head}  -> heatmaps/{head}/{sample}.h5ad
#   heatmap       the tile map + the slide (+ report genes, spot predictions, cohort scale)
#                 -> heatmaps/{head}/{sample}.geojson and heatmaps/{head}/{sample}/{gene}.png
# With heatmap.shared_scale, heatmap_scale pools every slide's map into heatmaps/{head}/scale.tsv
# first, so all slides of the cohort share one colour scale per gene.
# Config: the `heatmap` section (workflow/schemas/heatmap.schema.yaml, config/README.md).

import re
import shlex

HEATMAP = config["heatmap"]
HEATMAP_HEADS = list(config["train"].get("heads", ["mlp"]))
HEATMAP_TISSUE = config["tiling"]["tissue"]
# {sample} is one of the sheet's IDs, so "{sample}" (the PNG folder) never matches
# "{sample}.h5ad", "{sample}.geojson" or "scale.tsv" beside it.
HEATMAP_WILDCARDS = {
    "sample": "|".join(re.escape(s) for s in SAMPLE_IDS),
    "head": r"[A-Za-z0-9_-]+",
}


def _fmt(pattern, wildcards):
    """Fill {head}, {sample} and (in an encoder sweep) {encoder} from the job's wildcards."""
    return pattern.format(**dict(wildcards.items()))


def heatmap_encoder(wildcards):
    # The encoder the head was trained on: the sweep's {encoder}, else the joined one.
    return join_encoder(wildcards)


def heatmap_gene_inputs(wildcards):
    """The report's genes.tsv when the genes to draw are not listed in the config."""
    if HEATMAP.get("genes"):
        return {}
    return {"report": _fmt(f"{ENC_RESULTS}/report/{{head}}/genes.tsv", wildcards)}


def heatmap_gene_args(wildcards, input):
    if HEATMAP.get("genes"):
        return "--genes " + shlex.quote(",".join(str(g) for g in HEATMAP["genes"]))
    return f"--report {input.report} --n-genes {HEATMAP['n_genes']}"


def heatmap_map_inputs(wildcards):
    return {
        "features": f"{RESULTS}/features/{heatmap_encoder(wildcards)}/grid/{wildcards.sample}.h5",
        # the train stage's last output: its models directory is complete
        "trained": _fmt(f"{ENC_RESULTS}/predictions/{{head}}.h5ad", wildcards),
    }


rule heatmap_map:
    input:
        unpack(heatmap_map_inputs),
    output:
        f"{ENC_RESULTS}/heatmaps/{{head}}/{{sample}}.h5ad",
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
    return {"maps": maps, **heatmap_gene_inputs(wildcards)}


rule heatmap_scale:
    input:
        unpack(heatmap_scale_inputs),
    output:
        f"{ENC_RESULTS}/heatmaps/{{head}}/scale.tsv",
    wildcard_constraints:
        head=HEATMAP_WILDCARDS["head"],
    params:
        genes=heatmap_gene_args,
        low=HEATMAP["clip_percentiles"][0],
        high=HEATMAP["clip_percentiles"][1],
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
        "slide2expr heatmap-scale {input.maps} -o {output} {params.genes} "
        "--clip-percentiles {params.low} {params.high} > {log} 2>&1"


def heatmap_inputs(wildcards):
    inputs = {
        "map": _fmt(f"{ENC_RESULTS}/heatmaps/{{head}}/{{sample}}.h5ad", wildcards),
        "slide": sample_value(wildcards.sample, "slide"),
        **heatmap_gene_inputs(wildcards),
    }
    if MODE == "spot":  # measured vs predicted at the spots of training slides
        inputs["predictions"] = _fmt(f"{ENC_RESULTS}/predictions/{{head}}.h5ad", wildcards)
    if HEATMAP["shared_scale"]:
        inputs["scale"] = _fmt(f"{ENC_RESULTS}/heatmaps/{{head}}/scale.tsv", wildcards)
    return inputs


def heatmap_args(wildcards, input):
    args = [heatmap_gene_args(wildcards, input)]
    if "predictions" in input.keys():
        args.append(f"--predictions {input.predictions}")
    if "scale" in input.keys():
        args.append(f"--scale {input.scale}")
    if HEATMAP["geojson_all_genes"]:
        args.append("--geojson-all-genes")
    return " ".join(args)


rule heatmap:
    input:
        unpack(heatmap_inputs),
    output:
        geojson=f"{ENC_RESULTS}/heatmaps/{{head}}/{{sample}}.geojson",
        pngs=directory(f"{ENC_RESULTS}/heatmaps/{{head}}/{{sample}}"),
    wildcard_constraints:
        **HEATMAP_WILDCARDS,
    params:
        cfg=HEATMAP,
        tissue=HEATMAP_TISSUE,
        args=heatmap_args,
        out=lambda w, output: os.path.dirname(output.geojson),
        low=HEATMAP["clip_percentiles"][0],
        high=HEATMAP["clip_percentiles"][1],
    log:
        f"{RESULTS}/logs/heatmap/{ENC_TAG}{{head}}/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/heatmap/{ENC_TAG}{{head}}/{{sample}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        "slide2expr heatmap {input.map} --slide {input.slide} -o {params.out} {params.args} "
        "--clip-percentiles {params.low} {params.high} --cmap {params.cfg[cmap]} "
        "--alpha {params.cfg[alpha]} --thumbnail-px {params.cfg[thumbnail_px]} "
        "--mask-mpp {params.tissue[mask_mpp]} "
        "--min-saturation {params.tissue[min_saturation]} "
        "--closing-um {params.tissue[closing_um]} "
        "--min-object-um2 {params.tissue[min_object_um2]} "
        "--max-hole-um2 {params.tissue[max_hole_um2]} > {log} 2>&1"


def _heatmap_predictions_have_a_rule():
    """Whether the train stage has a rule writing the predictions (and models)."""
    try:
        return any(str(out).startswith(f"{ENC_RESULTS}/predictions/")
                   for r in workflow.rules
                   if not r.name.startswith(("heatmap", "report"))
                   for out in r.output)
    except Exception:  # an API change in Snakemake: assume the train stage is there
        return True


# A default target once the train stage can make the models (the rules work either way).
if HEATMAP.get("enabled", True) and _heatmap_predictions_have_a_rule():
    ALL_TARGETS.extend(expand_encoders(f"{ENC_RESULTS}/heatmaps/{{head}}/{{sample}}.geojson",
                                       head=HEATMAP_HEADS, sample=SAMPLE_IDS))
    ALL_TARGETS.extend(expand_encoders(f"{ENC_RESULTS}/heatmaps/{{head}}/{{sample}}",
                                       head=HEATMAP_HEADS, sample=SAMPLE_IDS))
