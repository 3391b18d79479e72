# The synthetic demo cohort (config `demo_data: true`): written once, offline, seeded.

if config.get("demo_data", False):

    rule demo_data:
        output:
            slides=expand("resources/demo/slides/{sample}.tiff", sample=SAMPLE_IDS),
            counts=expand("resources/demo/counts/{sample}.tsv", sample=SAMPLE_IDS),
            spots=expand("resources/demo/spots/{sample}.tsv", sample=SAMPLE_IDS),
            bulk="resources/demo/bulk_counts.tsv",
            truth="resources/demo/truth/genes.tsv",
        log:
            "results/logs/demo_data.log",
        benchmark:
            "results/benchmarks/demo_data.tsv"
        conda:
            CONDA_ENV
        params:
            n=len(SAMPLE_IDS),
        shell:
            "slide2expr demo-data resources/demo --n-slides {params.n} > {log} 2>&1"
