# Join stage: expression (spot counts or a bulk matrix) + features -> results/dataset.h5ad.

import json
import shlex

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


def join_args(wildcards, input):
    args = [
        f"--mode {MODE}",
        f"--encoder {join_encoder(wildcards)}",
        f"--values {JOIN['values']}",
        f"--orientation {JOIN['orientation']}",
        f"--on-missing {JOIN['on_missing']}",
        f"--patient-slides {JOIN['patient_slides']}",
        f"--match-on {JOIN['match_on']}",
        f"--target-sum {JOIN['target_sum']}",
        "--sparse" if JOIN["sparse"] else "--dense",
    ]
    if JOIN.get("gene_map"):
        args.append(f"--gene-map {shlex.quote(str(JOIN['gene_map']))}")
    if DATA_ROOT:
        args.append(f"--data-root {shlex.quote(str(DATA_ROOT))}")
    if MODE == "bulk":
        args.append(f"--expression {shlex.quote(str(input.expression))}")
    args.append(f"--run-config {shlex.quote(json.dumps(config, default=str))}")
    return " ".join(args)


rule join:
    input:
        unpack(join_inputs),
    output:
        f"{ENC_RESULTS}/dataset.h5ad",
    params:
        features_dir=lambda w: f"{RESULTS}/features/{join_encoder(w)}/{UNIT_TILING}",
        args=join_args,
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
        "{params.args} > {log} 2>&1"


ALL_TARGETS.extend(expand_encoders(f"{ENC_RESULTS}/dataset.h5ad"))
