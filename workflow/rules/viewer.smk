# Viewer stage: one zoomable OpenSeadragon page for the cohort, with the H&E of every slide at
# full resolution (Deep Zoom pyramid) and every predicted gene as a layer, the measured
# expression at the spots (spot mode) and the report's r beside each gene.
#   viewer   heatmaps/{head}/{sample}.h5ad (all samples) + slides (+ report, predictions,
#            cohort scale) -> viewer/ (index.html, data.js, slides/{sample}/...)
# Shows the first configured head. A final target when heatmaps are (heatmap.enabled).
# Open results/viewer/index.html, or `slide2expr view results --serve --no-build`.
# Config: heatmap.clip_percentiles and tiling.tissue (the outline), as the heatmaps use them.


rule viewer:
    input:
        unpack(viewer_inputs),
    output:
        directory(f"{ENC_RESULTS}/viewer"),
    log:
        f"{RESULTS}/logs/viewer/{ENC_TAG}viewer.log",
    benchmark:
        f"{RESULTS}/benchmarks/viewer/{ENC_TAG}viewer.tsv"
    conda:
        CONDA_ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        results=lambda w: fill_wildcards(ENC_RESULTS, w),
        args=viewer_args,
        head=HEADS[0],
        default_mpp=default_mpp_option(),
        cfg=config_json("heatmap.clip_percentiles", "tiling.tissue"),
    shell:
        "VIPS_CONCURRENCY={threads} slide2expr view {params.results} --head {params.head} "
        "-o {output} {params.args} {params.default_mpp} --config-json {params.cfg} > {log} 2>&1"
