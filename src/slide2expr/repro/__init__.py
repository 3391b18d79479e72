"""Reproducibility: the run manifest, comparing two runs file by file, and sweep summaries.

- :mod:`.manifest`: ``results/manifest.json`` (software, config, input hashes, timings);
- :mod:`.verify`: ``slide2expr verify RUN_A RUN_B`` (identical within a tolerance?);
- :mod:`.compare`: encoder x head tables of a sweep.
"""
