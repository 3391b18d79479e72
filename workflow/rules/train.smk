# Train stage: cross-validated regression heads and baselines -> out-of-fold predictions.
#   results/dataset.h5ad -> results/models/{head}/ (fold{k}/best.ckpt, head.safetensors,
#                           head.json, metrics.csv; splits.tsv)
#                         + results/predictions/{head}.h5ad
# One job per head in train.heads (a sweep of heads shares the dataset and the folds).
# Threads, memory, GPUs and runtime are resources: override them in a profile, e.g.
#   set-resources: {train: {gpu: 1, mem_mb: 64000, runtime: 480}}
# train.accelerator "auto" uses a GPU when the job has one.


rule train:
    # a fixed gene list (train.genes.list) is an input: editing it retrains
    input:
        **({"genes": TRAIN["genes"]["list"]} if TRAIN.get("genes", {}).get("list") else {}),
        dataset=f"{ENC_RESULTS}/dataset.h5ad",
    output:
        models=directory(f"{ENC_RESULTS}/models/{{head}}"),
        predictions=f"{ENC_RESULTS}/predictions/{{head}}.h5ad",
    log:
        f"{RESULTS}/logs/train/{ENC_TAG}{{head}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{ENC_TAG}{{head}}.tsv"
    wildcard_constraints:
        head="|".join(HEADS),
    conda:
        CONDA_ENV
    threads: 2
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=240,
    params:
        cfg=config_json("train"),
    shell:
        "slide2expr train {input.dataset} --head {wildcards.head} "
        "--models-dir {output.models} --predictions {output.predictions} "
        "--config-json {params.cfg} --threads {threads} > {log} 2>&1"
