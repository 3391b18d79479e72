"""What the user brings: the sample sheet, slides, spot tables and expression matrices.

Each module reads one kind of user input and checks it, raising
:class:`~slide2expr.errors.InputError` (file, problem, fix) on anything wrong:

- :mod:`.samples`: the sample sheet (one row per slide);
- :mod:`.slides`: whole-slide images in physical units, one module per backend (OpenSlide,
  tifffile, plain images, Space Ranger's PNG) behind :func:`~.slides.open_slide`;
- :mod:`.mpp`: the mpp policy (metadata, sample sheet, config default; plausible range);
- :mod:`.spots`: spatial-transcriptomics spot positions (Space Ranger, her2st-style tables);
- :mod:`.expression`: bulk and spot expression matrices, gene ID mapping;
- :mod:`.textio`: the delimited-text helpers they share.

Nothing here reads a file another stage wrote: those are owned by :mod:`slide2expr.contracts`.
Modules are imported one by one (not re-exported here) so that reading a sample sheet does
not import the slide readers.
"""
