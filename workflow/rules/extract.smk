# Extract stage: tiles -> embeddings, one job per slide, tiling and encoder.
# Output: results/features/{encoder}/{tiling}/{sample}.h5 (several encoders coexist).
# Config: the `extract` section (workflow/schemas/extract.schema.yaml, config/README.md).
# Threads, memory, GPUs and runtime are resources: override them in a profile, e.g.
#   set-resources: {extract: {gpu: 1, mem_mb: 32000, runtime: 240}}
#   set-threads: {extract: 8}

EXTRACT = config["extract"]
EXTRACT_ENCODERS = list(EXTRACT["encoders"])


wildcard_constraints:
    encoder=r"[A-Za-z0-9][A-Za-z0-9._-]*",


def extract_targets(samples=None, encoders=None, tilings=None):
    """Features files for every (encoder, tiling, sample) combination.

    Defaults: all samples of the sheet, the configured encoders, and the tiling of the
    training units (spots in spot mode, grid in bulk mode).
    """
    return expand(
        f"{RESULTS}/features/{{encoder}}/{{tiling}}/{{sample}}.h5",
        encoder=encoders if encoders is not None else EXTRACT_ENCODERS,
        tiling=tilings if tilings is not None else [UNIT_TILING],
        sample=samples if samples is not None else SAMPLE_IDS,
    )


def extract_inputs(wildcards):
    inputs = {"tiles": f"{RESULTS}/tiles/{wildcards.tiling}/{wildcards.sample}.h5"}
    weights = (EXTRACT.get("weights") or {}).get(wildcards.encoder)
    if weights:
        inputs["weights"] = weights
    return inputs


def extract_weights_arg(wildcards, input):
    return f"--weights {input.weights}" if "weights" in input.keys() else ""


def extract_num_workers(wildcards):
    # null: chosen at run time from the device and threads (GPU: threads - 1 readers).
    return cli_option("--num-workers", EXTRACT.get("num_workers"))


rule extract:
    input:
        unpack(extract_inputs),
    output:
        f"{RESULTS}/features/{{encoder}}/{{tiling}}/{{sample}}.h5",
    params:
        weights=extract_weights_arg,
        num_workers=extract_num_workers,
        batch_size=EXTRACT["batch_size"],
        device=EXTRACT["device"],
        dtype=EXTRACT["dtype"],
    log:
        f"{RESULTS}/logs/extract/{{encoder}}/{{tiling}}/{{sample}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract/{{encoder}}/{{tiling}}/{{sample}}.tsv"
    threads: 4
    resources:
        gpu=1 if EXTRACT["device"] == "cuda" else 0,
        mem_mb=8000,
        runtime=120,
    conda:
        CONDA_ENV
    shell:
        "slide2expr extract {input.tiles} -o {output} --encoder {wildcards.encoder} "
        "{params.weights} --batch-size {params.batch_size} {params.num_workers} "
        "--threads {threads} --device {params.device} --dtype {params.dtype} > {log} 2>&1"


ALL_TARGETS.extend(extract_targets())
