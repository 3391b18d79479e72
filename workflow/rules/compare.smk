# Compare stage: every (encoder, head) combination of the run side by side.
# Output: results/report/compare.tsv (mean r over all genes / top / HVG, genes significant,
# wall time per stage per encoder x head, baselines included) and results/report/compare.html.
# Tiles are made once and features once per encoder; every head of an encoder reads the same
# features and dataset (see the sweep paths in common.smk).


rule compare:
    input:
        [path for _, _, path in compare_summaries()],
    output:
        tsv=f"{RESULTS}/report/compare.tsv",
        html=report(
            f"{RESULTS}/report/compare.html",
            caption="../report/compare.rst",
            category="Comparison",
            labels={"file": "compare.html"},
        ),
    log:
        f"{RESULTS}/logs/compare/compare.log",
    benchmark:
        f"{RESULTS}/benchmarks/compare/compare.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        runs=" ".join(f"--run {e}:{h}:{p}" for e, h, p in compare_summaries()),
        benchmarks=f"{RESULTS}/benchmarks",
        cfg=config_json("report.top_n", "report.n_hvg"),
    shell:
        "slide2expr compare {params.runs} --benchmarks {params.benchmarks} -o {output.tsv} "
        "--html {output.html} --config-json {params.cfg} > {log} 2>&1"
