# Report stage: per-gene statistics, summary and a self-contained HTML page for each head's
# out-of-fold predictions. `snakemake --report report.zip` bundles every head's index.html.
# Config: the `report` section (workflow/schemas/report.schema.yaml, config/README.md).
# Pseudo-bulk runs with pseudobulk.ceiling_config also read input.ceiling: the nested spot
# run's predictions, scored as the ceiling of the map-versus-spots section.


rule report:
    input:
        **({"ceiling": CEILING_PREDICTIONS} if CEILING_PREDICTIONS else {}),
        predictions=f"{ENC_RESULTS}/predictions/{{head}}.h5ad",
    output:
        genes=f"{ENC_RESULTS}/report/{{head}}/genes.tsv",
        summary=f"{ENC_RESULTS}/report/{{head}}/summary.json",
        html=report(
            f"{ENC_RESULTS}/report/{{head}}/index.html",
            caption="../report/report.rst",
            category="Per-gene report",
            labels={
                "head": "{head}",
                "file": "index.html",
                **({"encoder": "{encoder}"} if SWEEP else {}),
            },
        ),
    log:
        f"{RESULTS}/logs/report/{ENC_TAG}{{head}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/{ENC_TAG}{{head}}.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        out=lambda w, output: os.path.dirname(output.genes),
        cfg=config_json("report"),
        ceiling=lambda w, input: f"--ceiling {input.ceiling}" if "ceiling" in input.keys() else "",
    shell:
        "slide2expr report {input.predictions} -o {params.out} {params.ceiling} "
        "--config-json {params.cfg} > {log} 2>&1"
