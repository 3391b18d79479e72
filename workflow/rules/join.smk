# Join stage: expression (spot counts or a bulk matrix) + features -> results/dataset.h5ad.
# Config: the `join` section (workflow/schemas/join.schema.yaml); the whole config is passed
# because the dataset records it as provenance.

JOIN = config["join"]
# The encoder whose features are joined: join.encoder, else the first of extract.encoders.
# In an encoder sweep (several extract.encoders) each encoder is joined: results/{encoder}/.
JOIN_ENCODER = JOIN.get("encoder") or SWEEP_ENCODERS[0]


def join_encoder(wildcards):
    return wildcards.encoder if SWEEP else JOIN_ENCODER


if MODE == "bulk" and not JOIN.get("expression"):
    raise ValueError(
        "config: join.expression (the bulk expression matrix) is required in bulk mode"
    )


def join_inputs(wildcards):
    inputs = {
        "samples": config["samples"],
        "features": expand(
            f"{RESULTS}/features/{join_encoder(wildcards)}/{UNIT_TILING}/{{sample}}.h5",
            sample=SAMPLE_IDS,
        ),
    }
    if MODE == "spot":
        inputs["counts"] = [sample_value(s, "counts") for s in SAMPLE_IDS]
        inputs["spots"] = [sample_value(s, "spots") for s in SAMPLE_IDS]
    else:
        inputs["expression"] = JOIN["expression"]
    return inputs


rule join:
    input:
        unpack(join_inputs),
    output:
        f"{ENC_RESULTS}/dataset.h5ad",
    params:
        features_dir=lambda w: f"{RESULTS}/features/{join_encoder(w)}/{UNIT_TILING}",
        encoder=join_encoder,
        cfg=config_json("*"),
    log:
        f"{RESULTS}/logs/join/{ENC_TAG}join.log",
    benchmark:
        f"{RESULTS}/benchmarks/join/{ENC_TAG}join.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        CONDA_ENV
    shell:
        "slide2expr join {input.samples} --features-dir {params.features_dir} -o {output} "
        "--encoder {params.encoder} --config-json {params.cfg} > {log} 2>&1"
