# Extract stage: tiles -> embeddings, one job per slide and encoder that embeds all the
# slide's planned tilings (EXTRACT_TILINGS in common.smk: spots or grid, ctx{um}, and with
# heatmaps grid and grid_ctx{um}) in one pass: one slide read, one stain fit, one encoder start.
# Output: results/features/{encoder}/{tiling}/{sample}.h5, one file per tiling (several
# encoders coexist). An interrupted job resumes each tiling from its partial file.
# Config: the `extract` section (workflow/schemas/extract.schema.yaml, config/README.md).
# Threads, memory, GPUs and runtime are resources: override them in a profile, e.g.
#   set-resources: {extract: {gpu: 1, mem_mb: 32000, runtime: 240}}
#   set-threads: {extract: 8}

# only what the command reads: adding an encoder to the sweep reruns no extraction
EXTRACT_PARAMS = config_json(
    "extract.batch_size",
    "extract.num_workers",
    "extract.device",
    "extract.dtype",
    "extract.stain_normalize",
    "extract.stain_reference",
    "extract.views",
)
EXTRACT_RESOURCES = {
    "gpu": 1 if EXTRACT["device"] == "cuda" else 0,
    "mem_mb": 8000,
    "runtime": 120,
}
EXTRACT_SHELL = (
    "slide2expr extract {input.tiles} {params.outs} --encoder {wildcards.encoder} "
    "{params.weights} --threads {threads} --config-json {params.cfg} > {log} 2>&1"
)


rule extract:
    input:
        unpack(extract_inputs),
    output:
        **{t: f"{RESULTS}/features/{{encoder}}/{t}/{{sample}}.h5" for t in EXTRACT_TILINGS},
    log:
        f"{RESULTS}/logs/extract/{{encoder}}/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract/{{encoder}}/{{sample}}.tsv"
    conda:
        CONDA_ENV
    threads: EXTRACT_THREADS
    resources:
        **EXTRACT_RESOURCES,
    params:
        weights=extract_weights_arg,
        outs=extract_out_args,
        cfg=EXTRACT_PARAMS,
    shell:
        EXTRACT_SHELL


# A tiling outside EXTRACT_TILINGS asked for by name (e.g. a heatmap target while
# heatmap.enabled is false): a job of its own. A planned tiling is always rule extract's.
ruleorder: extract > extract_tiling


rule extract_tiling:
    input:
        unpack(extract_inputs),
    output:
        f"{RESULTS}/features/{{encoder}}/{{tiling}}/{{sample}}.h5",
    log:
        f"{RESULTS}/logs/extract/{{encoder}}/{{tiling}}/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract/{{encoder}}/{{tiling}}/{{sample}}.tsv"
    conda:
        CONDA_ENV
    threads: EXTRACT_THREADS
    resources:
        **EXTRACT_RESOURCES,
    params:
        weights=extract_weights_arg,
        outs=extract_out_args,
        cfg=EXTRACT_PARAMS,
    shell:
        EXTRACT_SHELL


# Regions of a slide: one job per slide and encoder embeds every planned tiling of all its
# regions in one pass (one slide read, one stain fit, one encoder start) into
# results/features/{encoder}/regions/{slide}/ (resumed from its partial files like any
# extraction; the .done flag marks it complete); region_features links each region's files
# to the usual paths (features/{encoder}/{tiling}/{sample}.h5).
if HAS_REGIONS:

    ruleorder: region_features > extract > extract_tiling

    rule extract_regions:
        input:
            unpack(extract_regions_inputs),
        output:
            touch(f"{SLIDE_GROUP_DIR['features']}.done"),
        log:
            f"{RESULTS}/logs/extract/{{encoder}}/regions/{{slide}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/extract/{{encoder}}/regions/{{slide}}.tsv"
        wildcard_constraints:
            slide=r"[A-Za-z0-9_-][A-Za-z0-9._-]*",
        conda:
            CONDA_ENV
        threads: EXTRACT_THREADS
        resources:
            **EXTRACT_RESOURCES,
        params:
            weights=extract_weights_arg,
            outs=extract_regions_outs,
            cfg=EXTRACT_PARAMS,
        shell:
            EXTRACT_SHELL

    rule region_features:
        input:
            region_features_input,
        output:
            **{t: f"{RESULTS}/features/{{encoder}}/{t}/{{sample}}.h5" for t in EXTRACT_TILINGS},
        wildcard_constraints:
            sample=REGION_SAMPLE_WILDCARD,
        localrule: True
        params:
            link=lambda w, input, output: link_files(
                region_features_sources(w, input, output), list(output), str(input)
            ),
        shell:
            "{params.link}"
