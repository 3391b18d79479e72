# Report stage: per-gene statistics, summary and a self-contained HTML page for each head's
# out-of-fold predictions. `snakemake --report report.zip` bundles every head's index.html.

REPORT = config["report"]
REPORT_HEADS = list(config["train"].get("heads", ["mlp"]))


rule report:
    input:
        f"{ENC_RESULTS}/predictions/{{head}}.h5ad",
    output:
        genes=f"{ENC_RESULTS}/report/{{head}}/genes.tsv",
        summary=f"{ENC_RESULTS}/report/{{head}}/summary.json",
        html=report(
            f"{ENC_RESULTS}/report/{{head}}/index.html",
            caption="../report/report.rst",
            category="Per-gene report",
            labels={"head": "{head}", "file": "index.html",
                    **({"encoder": "{encoder}"} if SWEEP else {})},
        ),
    params:
        cfg=REPORT,
        out=lambda w, output: os.path.dirname(output.genes),
    log:
        f"{RESULTS}/logs/report/{ENC_TAG}{{head}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/{ENC_TAG}{{head}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        "slide2expr report {input} -o {params.out} --top-n {params.cfg[top_n]} "
        "--n-hvg {params.cfg[n_hvg]} --bootstrap {params.cfg[bootstrap]} --alpha {params.cfg[alpha]} "
        "--seed {params.cfg[seed]} --baseline {params.cfg[baseline]} --n-scatter {params.cfg[n_scatter]} "
        "> {log} 2>&1"


def _predictions_have_a_rule():
    """Whether an earlier rule (the train stage) writes results/predictions/{head}.h5ad."""
    try:
        return any(str(out).startswith(f"{ENC_RESULTS}/predictions/")
                   for r in workflow.rules if r.name != "report" for out in r.output)
    except Exception:  # an API change in Snakemake: assume the train stage is there
        return True


# Only a default target once the train stage can make its input (the report rule itself
# works either way, for predictions made outside the workflow).
if _predictions_have_a_rule():
    ALL_TARGETS.extend(expand_encoders(f"{ENC_RESULTS}/report/{{head}}/index.html",
                                       head=REPORT_HEADS))
