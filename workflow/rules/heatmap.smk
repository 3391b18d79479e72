# Heatmap stage: each trained head applied to every grid tile of every slide, drawn for
# pathologists. Per sample and head, one job (features + model -> tile map, PNG overlays,
# QuPath GeoJSON):
#   heatmaps/{head}/{sample}.h5ad, {sample}.geojson, {sample}/{gene}.png
# With heatmap.shared_scale every slide's map is needed before any is drawn (one colour scale
# per gene across the cohort), so the job splits in two around heatmap_scale:
#   heatmap_map (tile map) -> heatmap_scale (heatmaps/{head}/scale.tsv) -> heatmap (draw)
# A head with context inputs (train.head_inputs) also reads its blocks on the grid tiles:
# features/{encoder}/grid_ctx{um}/ (rule grid_context_tiles + extract) and, for the slide
# block, the dataset (heatmap_model_inputs in common.smk; slide2expr.predict.inputs).
# Config: the `heatmap` section and tiling.tissue (workflow/schemas/, config/README.md).

HEATMAP_CONFIG = config_json(
    *(f"heatmap.{key}" for key in HEATMAP if key not in ("enabled", "shared_scale")),
    "tiling.tissue",
)
HEATMAP_OUTPUT = {
    "geojson": f"{ENC_RESULTS}/heatmaps/{{head}}/{{sample}}.geojson",
    "pngs": report(
        directory(f"{ENC_RESULTS}/heatmaps/{{head}}/{{sample}}"),
        patterns=["{gene}.png"],
        caption="../report/heatmap.rst",
        category="Heatmaps",
        subcategory="{head}",
        labels={"sample": "{sample}", "gene": "{gene}"},
    ),
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
            **HEATMAP_OUTPUT,
            tile_map=HEATMAP_MAP,
        log:
            HEATMAP_LOG,
        benchmark:
            HEATMAP_BENCH
        wildcard_constraints:
            **HEATMAP_WILDCARDS,
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            models=lambda w: fill_wildcards(f"{ENC_RESULTS}/models/{{head}}", w),
            out=lambda w, output: os.path.dirname(output.geojson),
            args=heatmap_draw_args,
            dataset=heatmap_dataset_arg,
            default_mpp=default_mpp_option(),
            cfg=HEATMAP_CONFIG,
        shell:
            "slide2expr heatmap {input.features} --model-dir {params.models} "
            "--slide {input.slide} --sample-id {wildcards.sample} -o {params.out} "
            "{params.args} {params.dataset} --threads {threads} {params.default_mpp} "
            "--config-json {params.cfg} "
            "> {log} 2>&1"

else:

    rule heatmap_map:
        input:
            unpack(heatmap_model_inputs),
        output:
            HEATMAP_MAP,
        log:
            f"{RESULTS}/logs/heatmap_map/{ENC_TAG}{{head}}/{{sample}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/heatmap_map/{ENC_TAG}{{head}}/{{sample}}.tsv"
        wildcard_constraints:
            **HEATMAP_WILDCARDS,
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            models=lambda w: fill_wildcards(f"{ENC_RESULTS}/models/{{head}}", w),
            out=lambda w, output: os.path.dirname(output[0]),
            dataset=heatmap_dataset_arg,
        shell:
            "slide2expr heatmap {input.features} --model-dir {params.models} -o {params.out} "
            "--sample-id {wildcards.sample} {params.dataset} --map-only --threads {threads} "
            "> {log} 2>&1"

    rule heatmap_scale:
        input:
            unpack(heatmap_scale_inputs),
        output:
            f"{ENC_RESULTS}/heatmaps/{{head}}/scale.tsv",
        log:
            f"{RESULTS}/logs/heatmap_scale/{ENC_TAG}{{head}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/heatmap_scale/{ENC_TAG}{{head}}.tsv"
        wildcard_constraints:
            head=HEATMAP_WILDCARDS["head"],
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=8000,
            runtime=30,
        params:
            report=heatmap_draw_args,
            cfg=config_json("heatmap.genes", "heatmap.n_genes", "heatmap.clip_percentiles"),
        shell:
            "slide2expr heatmap-scale {input.maps} -o {output} {params.report} "
            "--config-json {params.cfg} > {log} 2>&1"

    rule heatmap:
        input:
            unpack(heatmap_draw_inputs),
            tile_map=HEATMAP_MAP,
        output:
            **HEATMAP_OUTPUT,
        log:
            HEATMAP_LOG,
        benchmark:
            HEATMAP_BENCH
        wildcard_constraints:
            **HEATMAP_WILDCARDS,
        conda:
            CONDA_ENV
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            out=lambda w, output: os.path.dirname(output.geojson),
            args=heatmap_draw_args,
            default_mpp=default_mpp_option(),
            cfg=HEATMAP_CONFIG,
        shell:
            "slide2expr heatmap {input.tile_map} --slide {input.slide} -o {params.out} "
            "{params.args} {params.default_mpp} --config-json {params.cfg} > {log} 2>&1"
