# Extract stage: tiles -> embeddings, one job per slide, tiling and encoder.
# Output: results/features/{encoder}/{tiling}/{sample}.h5 (several encoders coexist).
# Config: the `extract` section (workflow/schemas/extract.schema.yaml, config/README.md).
# Threads, memory, GPUs and runtime are resources: override them in a profile, e.g.
#   set-resources: {extract: {gpu: 1, mem_mb: 32000, runtime: 240}}
#   set-threads: {extract: 8}


rule extract:
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
        gpu=1 if EXTRACT["device"] == "cuda" else 0,
        mem_mb=8000,
        runtime=120,
    params:
        weights=extract_weights_arg,
        # only what the command reads: adding an encoder to the sweep reruns no extraction
        cfg=config_json(
            "extract.batch_size",
            "extract.num_workers",
            "extract.device",
            "extract.dtype",
            "extract.stain_normalize",
            "extract.stain_reference",
            "extract.views",
        ),
    shell:
        "slide2expr extract {input.tiles} -o {output} --encoder {wildcards.encoder} "
        "{params.weights} --threads {threads} --config-json {params.cfg} > {log} 2>&1"
