# Run manifest: results/manifest.json, written last. Package version and git commit, Python
# and library versions, torch device and precision (and the determinism each stage allows),
# the full resolved config, sha256 of every input file, seeds, start/end time and per-stage
# timings from results/benchmarks/. Include this file last: it waits for every other target.


rule manifest:
    input:
        # everything the other stages produce, so the manifest sees all their benchmark files
        lambda w: get_final_output(manifest=False),
    output:
        f"{RESULTS}/manifest.json",
    log:
        f"{RESULTS}/logs/manifest/manifest.log",
    benchmark:
        f"{RESULTS}/benchmarks/manifest/manifest.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        results=lambda w, output: os.path.dirname(output[0]),
        cfg=config_json("*"),
    shell:
        "slide2expr manifest -o {output} --results {params.results} --config-json {params.cfg} "
        "--no-progress > {log} 2>&1"
