# Viewer stage: one zoomable OpenSeadragon page for the cohort, with the H&E of every slide at
# full resolution (Deep Zoom pyramid) and every predicted gene as a layer, the measured
# expression at the spots (spot mode) and the report's r beside each gene.
#   viewer   heatmaps/{head}/{sample}.h5ad (all samples) + slides (+ report, predictions,
#            cohort scale) -> viewer/ (index.html, data.js, slides/{sample}/...)
# Shows the first configured head. Part of `rule all` when the heatmaps are (heatmap.enabled).
# Open results/viewer/index.html, or `slide2expr view results --serve --no-build`.

VIEWER_HEAD = HEATMAP_HEADS[0]
# OpenSeadragon as `npm ci` installed it beside this Snakefile (scripts/setup.sh): jobs whose
# slide2expr is a non-editable install (conda environments on cluster nodes) find it here.
_OSD = Path(workflow.basedir) / "node_modules" / "openseadragon" / "build" / "openseadragon"
if _OSD.is_dir():
    os.environ.setdefault("SLIDE2EXPR_OPENSEADRAGON", str(_OSD))


def viewer_inputs(wildcards):
    inputs = {
        "maps": [_fmt(f"{ENC_RESULTS}/heatmaps/{VIEWER_HEAD}/{s}.h5ad", wildcards)
                 for s in SAMPLE_IDS],
        "slides": [sample_value(s, "slide") for s in SAMPLE_IDS],
        "report": _fmt(f"{ENC_RESULTS}/report/{VIEWER_HEAD}/genes.tsv", wildcards),
    }
    if MODE == "spot":  # measured expression at the spots of training slides
        inputs["predictions"] = _fmt(f"{ENC_RESULTS}/predictions/{VIEWER_HEAD}.h5ad", wildcards)
    if HEATMAP["shared_scale"]:
        inputs["scale"] = _fmt(f"{ENC_RESULTS}/heatmaps/{VIEWER_HEAD}/scale.tsv", wildcards)
    return inputs


def viewer_args(wildcards, input):
    args = [f"--report {input.report}"]
    args += [f"--slide {shlex.quote(f'{s}={p}')}" for s, p in zip(SAMPLE_IDS, input.slides)]
    if "predictions" in input.keys():
        args.append(f"--predictions {input.predictions}")
    if "scale" in input.keys():
        args.append(f"--scale {input.scale}")
    return " ".join(args)


rule viewer:
    input:
        unpack(viewer_inputs),
    output:
        directory(f"{ENC_RESULTS}/viewer"),
    params:
        results=lambda w: _fmt(ENC_RESULTS, w),
        args=viewer_args,
        head=VIEWER_HEAD,
        tissue=HEATMAP_TISSUE,
        low=HEATMAP["clip_percentiles"][0],
        high=HEATMAP["clip_percentiles"][1],
    log:
        f"{RESULTS}/logs/viewer/{ENC_TAG}viewer.log",
    benchmark:
        f"{RESULTS}/benchmarks/viewer/{ENC_TAG}viewer.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        CONDA_ENV
    shell:
        "VIPS_CONCURRENCY={threads} slide2expr view {params.results} --head {params.head} "
        "-o {output} {params.args} --clip-percentiles {params.low} {params.high} "
        "--mask-mpp {params.tissue[mask_mpp]} "
        "--min-saturation {params.tissue[min_saturation]} "
        "--closing-um {params.tissue[closing_um]} "
        "--min-object-um2 {params.tissue[min_object_um2]} "
        "--max-hole-um2 {params.tissue[max_hole_um2]} > {log} 2>&1"


if HEATMAP.get("enabled", True) and _heatmap_predictions_have_a_rule():
    ALL_TARGETS.extend(expand_encoders(f"{ENC_RESULTS}/viewer"))
