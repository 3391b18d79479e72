# Join stage: expression (spot counts or a bulk matrix) + features -> results/dataset.h5ad.
# Config: the `join` section (workflow/schemas/join.schema.yaml), mode, data_root and
# tiling.context_um: the keys it reads, which the dataset records; the whole config is
# recorded once, in results/manifest.json.


rule join:
    input:
        unpack(join_inputs),
    output:
        f"{ENC_RESULTS}/dataset.h5ad",
    log:
        f"{RESULTS}/logs/join/{ENC_TAG}join.log",
    benchmark:
        f"{RESULTS}/benchmarks/join/{ENC_TAG}join.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        features_dir=lambda w: f"{RESULTS}/features/{join_encoder(w)}/{UNIT_TILING}",
        encoder=join_encoder,
        cfg=config_json("mode", "data_root", "join", "tiling.context_um"),
    shell:
        "slide2expr join {input.samples} --features-dir {params.features_dir} -o {output} "
        "--encoder {params.encoder} --config-json {params.cfg} > {log} 2>&1"
