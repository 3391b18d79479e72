"""Embed the tiles of one slide with an encoder, streaming the features to an h5 file.

Pipeline: a :class:`TileRegionDataset` reads each batch of tiles from the slide (every
DataLoader worker opens its own :class:`~slide2expr.inputs.slides.Slide`), straight at the
encoder's input size from the best pyramid level, as uint8 ``(B, H, W, 3)``. The batch goes
to the device as uint8 (4x less traffic than float), becomes a channels-last
``(B, 3, H, W)`` view there, is normalised, and runs through the encoder under
``torch.inference_mode``. On CUDA: bf16 autocast where supported (else fp16), pinned host
memory, non-blocking copies both ways, and the next batch computes while the previous one is
written. On the CPU the same code runs in float32, and without reader processes a reader
thread reads the next batches while the encoder runs (:func:`read_ahead`). With ``stain_normalize`` set, the
slide's own stain statistics are fitted once, before any tile is read, on a low-resolution
read of the whole slide (:mod:`slide2expr.extract.stain`), and the dataset normalises each
tile to the reference as it reads it (in the DataLoader workers). Features are written batch by batch
(:class:`~slide2expr.contracts.features.FeatureWriter`), so memory does not grow with the number of
tiles, and an interrupted run resumes where it stopped.

:func:`extract_tilings` embeds several tilings of one slide (spots, context windows, grid,
grid context) in one pass: one slide handle per process, one stain fit, one encoder build and
one DataLoader over all their tiles. Each tiling keeps its own features file and partial file;
the outputs are renamed into place only when every tiling is done, so a run that stops keeps
each tiling's rows (complete tilings included) in its partial file and the next run resumes
each where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from slide2expr.contracts.features import FeatureAttrs, FeatureWriter
from slide2expr.contracts.tiles import TileSet, read_tiles
from slide2expr.errors import InputError
from slide2expr.extract.encoders import Encoder, get_encoder, get_spec
from slide2expr.extract.options import ExtractOptions
from slide2expr.extract.stain import StainNormalizer, apply_view, build_normalizer, check_views
from slide2expr.hashing import file_fingerprint
from slide2expr.inputs.slides import Slide, open_slide

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ExtractResult:
    """What one extraction did.

    Attributes
    ----------
    path
        The features file written.
    n_tiles
        Rows in the file.
    n_computed
        Rows computed in this run (fewer than ``n_tiles`` after a resume).
    seconds
        Wall time of the embedding loop.
    device
        ``"cpu"`` or ``"cuda:0"``...
    """

    path: Path
    n_tiles: int
    n_computed: int
    seconds: float
    device: str

    @property
    def tiles_per_s(self) -> float:
        """Throughput of this run."""
        return self.n_computed / self.seconds if self.seconds > 0 else float("nan")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise InputError(None, f"unknown device {device!r}", f"use one of {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, "device 'cuda' was requested but no CUDA GPU is available",
                         "use --device auto or cpu, or run on a GPU node")
    return torch.device(device)


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def default_num_workers(device: torch.device | str = "cpu", cores: int | None = None) -> int:
    """Reader processes for a job with ``cores`` CPU cores.

    On a GPU the encoder is fast and reading is the bottleneck: every core but the main
    one reads (at most 8). On the CPU the encoder needs the cores: reading a tile costs
    about 3 ms of CPU against ~75 ms to embed it on 2 cores, so below 8 cores the main
    process reads between batches (0 workers); a reader process there only competes with
    the encoder's threads for the same cores (benchmarks/extract_throughput.py on 2 cores:
    ratio to the bare forward 0.90 with 0 workers, 0.79-0.84 with 1). From 8 cores on,
    one reader per 8 cores keeps up with the faster forward pass.
    """
    cores = cores or available_cores()
    if torch.device(device).type == "cuda":
        return max(1, min(8, cores - 1))
    return min(8, cores // 8)


class SlideHandle:
    """One open :class:`~slide2expr.inputs.slides.Slide` per process, opened lazily.

    Shared by the datasets of every tiling of a slide: pickled into a DataLoader worker once
    (pickle keeps shared references), it is opened there once, on first use.

    Parameters
    ----------
    slide_path
        The slide file.
    slide_mpp
        The mpp the tile stage resolved (used when the slide has none in its metadata).
    """

    def __init__(self, slide_path: str | Path, slide_mpp: float | None = None) -> None:
        self.slide_path = Path(slide_path)
        self.slide_mpp = slide_mpp
        self._slide: Slide | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_slide"], state["_pid"] = None, None  # each worker opens its own
        return state

    def get(self) -> Slide:
        """This process's open slide. In a forked reader process, the new handle adopts what
        the parent's had decoded (a plain image's pixels: shared pages, not a copy)."""
        if self._slide is None or self._pid != os.getpid():
            inherited = self._slide
            self._slide = open_slide(self.slide_path, sheet_mpp=self.slide_mpp,
                                     require_mpp=False)
            if inherited is not None:
                self._slide.adopt(inherited)
            self._pid = os.getpid()
        return self._slide

    def close(self) -> None:
        """Close this process's slide."""
        if self._slide is not None:
            self._slide.close()
            self._slide = None


class TileRegionDataset(Dataset):
    """Reads batches of tiles from a slide; an item is a ``(start, stop)`` row range.

    Each process (the main one or a DataLoader worker) opens the slide once, lazily, and
    keeps it open, so a slide is never reopened per tile.

    Parameters
    ----------
    slide_path
        The slide file.
    coords
        ``(N, 2)`` level-0 top-left corners.
    tile_px_level0
        Tile edge in level-0 pixels.
    out_px
        Edge of the returned images (the encoder's input size).
    slide_mpp
        The mpp the tile stage resolved (used when the slide has none in its metadata).
    stain
        Applied to each tile as it is read (the slide's fitted stain normaliser), or None.
    views
        Augmentation views (:data:`slide2expr.extract.stain.VIEWS`) returned beside each
        tile, made from the normalised tile.
    handle
        The slide handle to read through (shared by the tilings of one slide); default: its
        own.
    """

    def __init__(self, slide_path: str | Path, coords: np.ndarray, *, tile_px_level0: float,
                 out_px: int, slide_mpp: float | None = None,
                 stain: StainNormalizer | None = None, views: tuple[str, ...] = (),
                 handle: SlideHandle | None = None) -> None:
        self.slide_path = Path(slide_path)
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.tile_px_level0 = float(tile_px_level0)
        self.out_px = int(out_px)
        self.slide_mpp = slide_mpp
        self.stain = stain
        self.views = views
        self.handle = handle if handle is not None else SlideHandle(slide_path, slide_mpp)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def slide(self) -> Slide:
        """This process's open slide."""
        return self.handle.get()

    def read(self, i: int) -> np.ndarray:
        """Tile ``i`` as ``(out_px, out_px, 3)`` uint8 RGB, stain-normalised if set."""
        x, y = self.coords[i]
        s = self.tile_px_level0
        tile = self.slide().read_region_mpp(float(x), float(y), s, s, (self.out_px, self.out_px))
        return tile if self.stain is None else self.stain(tile)

    def row_order(self, start: int, stop: int) -> list[int]:
        """Rows ``[start, stop)`` in the order they are read: top to bottom, then left to
        right. A plain JPEG read by bands of rows (:mod:`~slide2expr.inputs.slides.jpeg_bands`)
        then decodes each band at most once a batch, whatever the tiles' order (spots in
        barcode order); the batch's rows stay where they belong."""
        rows = np.arange(start, stop)
        return rows[np.lexsort((self.coords[rows, 0], self.coords[rows, 1]))].tolist()

    def __getitem__(self, rows: tuple[int, int]) -> tuple[int, torch.Tensor | InputError]:
        """The batch of rows ``[start, stop)``, or the :class:`InputError` that reading hit.

        ``(B, H, W, 3)`` uint8; with views ``(B, 1 + V, H, W, 3)``: the tile, then its views.

        The error is returned, not raised: a DataLoader worker re-raises exceptions as a
        RuntimeError carrying a traceback, while a returned InputError reaches the main
        process intact and is raised there as the one-line message it is.
        """
        start, stop = rows
        batch = np.empty((stop - start, 1 + len(self.views), self.out_px, self.out_px, 3),
                         dtype=np.uint8)
        try:
            for i in self.row_order(start, stop):
                j = i - start
                batch[j, 0] = self.read(i)
                for v, view in enumerate(self.views, start=1):
                    batch[j, v] = apply_view(batch[j, 0], view, i)
        except InputError as exc:
            return start, exc
        return start, torch.from_numpy(batch if self.views else batch[:, 0])

    def close(self) -> None:
        """Close this process's slide handle."""
        self.handle.close()


class TilingsDataset(Dataset):
    """The tilings of one slide as one dataset; an item is ``(tiling, start, stop)``.

    Returns ``(tiling, start, batch)``: the batch of :class:`TileRegionDataset` ``tiling``.
    """

    def __init__(self, parts: list[TileRegionDataset]) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, item: tuple[int, int, int]
                    ) -> tuple[int, int, torch.Tensor | InputError]:
        k, start, stop = item
        return (k, *self.parts[k][start, stop])

    def close(self) -> None:
        """Close the slide handles."""
        for part in self.parts:
            part.close()


class _RowRanges(Sampler):
    """``(tiling, start, stop)`` ranges of ``batch_size`` rows: tiling ``k`` from ``firsts[k]``
    to ``sizes[k]``, tilings in order."""

    def __init__(self, firsts: list[int], sizes: list[int], batch_size: int) -> None:
        self.firsts, self.sizes, self.batch_size = firsts, sizes, batch_size

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for k, (first, n) in enumerate(zip(self.firsts, self.sizes, strict=True)):
            for start in range(first, n, self.batch_size):
                yield k, start, min(start + self.batch_size, n)

    def __len__(self) -> int:
        return sum(max(0, -(-(n - first) // self.batch_size))
                   for first, n in zip(self.firsts, self.sizes, strict=True))


def prepare_module(encoder: Encoder, device: torch.device) -> torch.nn.Module:
    """The encoder's module on ``device``, in eval mode and channels-last."""
    return encoder.module.eval().to(device, memory_format=torch.channels_last)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that support it, else fp16; None (float32) on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


#: Images per forward pass on the CPU. A batch is embedded in chunks of this size: the
#: activations of EfficientNet-Lite0's 112 px stages take ~10 MB an image, so a forward of
#: 64 held ~0.7 GB on top of the job (her2st extract jobs peaked at 1.8-1.9 GB PSS), while the
#: CPU's throughput is the same from 16 images on (benchmarks/extract_throughput.py).
CPU_FORWARD_CHUNK = 16


def embed_batch(module: torch.nn.Module, images: torch.Tensor, encoder: Encoder,
                device: torch.device, amp: torch.dtype | None) -> torch.Tensor:
    """Embed uint8 ``(B, H, W, 3)`` images; returns float32 ``(B, D)`` on ``device``.

    On the CPU the forward runs in chunks of :data:`CPU_FORWARD_CHUNK` images (memory)."""
    if device.type == "cpu" and images.shape[0] > CPU_FORWARD_CHUNK:
        return torch.cat([_embed(module, chunk, encoder, device, amp)
                          for chunk in images.split(CPU_FORWARD_CHUNK)])
    return _embed(module, images, encoder, device, amp)


def _embed(module: torch.nn.Module, images: torch.Tensor, encoder: Encoder,
           device: torch.device, amp: torch.dtype | None) -> torch.Tensor:
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2)  # a channels-last view
    x = encoder.preprocessing.normalize(x)
    if amp is not None:
        with torch.autocast(device_type=device.type, dtype=amp):
            out = module(x)
    else:
        out = module(x)
    return out.float()


def extract_features(tiles: str | Path | TileSet, out_path: str | Path,
                     options: ExtractOptions | None = None, **fields: Any) -> ExtractResult:
    """Embed every tile of one slide and write ``out_path``.

    Parameters
    ----------
    tiles
        A tiles file (``tiles/{tiling}/{sample}.h5``) or a :class:`TileSet`.
    out_path
        The features file to write (see :mod:`slide2expr.contracts.features`).
    options, **fields
        How to embed (:class:`~slide2expr.extract.options.ExtractOptions`): the record, its
        fields as keywords (``encoder=..., batch_size=...``), or both (the keywords win).

    Returns
    -------
    ExtractResult
        Counts and throughput.
    """
    return extract_tilings([(tiles, out_path)], options, **fields)[0]


def extract_tilings(jobs: Sequence[tuple[str | Path | TileSet, str | Path]],
                    options: ExtractOptions | None = None, **fields: Any) -> list[ExtractResult]:
    """Embed several tilings of one slide in one pass and write one features file each.

    The slide is opened once per process, its stains fitted once and the encoder built once;
    one DataLoader reads the tilings' tiles in turn. Every output stays in its partial file
    until all tilings are done, then each is renamed into place: a run that stops leaves no
    output, and the next one resumes every tiling from its partial file (a complete one is
    only renamed).

    Parameters
    ----------
    jobs
        ``(tiles, out_path)`` per tiling: a tiles file (or :class:`TileSet`) and the features
        file to write. Every tiles file must name the same slide (attr ``slide``) and mpp.
    options, **fields
        As in :func:`extract_features`; views are embedded for every tiling but grid ones.

    Returns
    -------
    list of ExtractResult
        One per tiling, in the order of ``jobs``.
    """
    opts = ExtractOptions.of(options, **fields)
    if not jobs:
        raise InputError(None, "no tiles file to extract", "pass at least one tiles file")
    if not isinstance(opts.encoder, Encoder):
        get_spec(opts.encoder)  # an unknown name fails before any file is read
    tilings = _SlideTilings.read(jobs, opts.slide)
    dev = _torch_device(opts)
    checked_views = check_views(opts.views)
    enc = (opts.encoder if isinstance(opts.encoder, Encoder)
           else get_encoder(opts.encoder, weights=opts.weights))
    stain, stain_attrs = build_normalizer(opts.stain_normalize,  # type: ignore[arg-type]
                                          tilings.slide_path, slide_mpp=tilings.slide_mpp,
                                          reference=opts.stain_reference)
    handle = SlideHandle(tilings.slide_path, tilings.slide_mpp)
    workers = (default_num_workers(dev, opts.threads) if opts.num_workers is None
               else int(opts.num_workers))
    with contextlib.ExitStack() as stack:
        writers, parts = _open_tilings(stack, tilings, enc, dev, opts=opts, stain=stain,
                                       stain_attrs=stain_attrs, views=checked_views,
                                       handle=handle)
        firsts = [w.n_done for w in writers]
        seconds = [0.0] * len(writers)
        _embed_remaining(TilingsDataset(parts), writers, tilings, enc, dev, handle=handle,
                         firsts=firsts, seconds=seconds, opts=opts, workers=workers)
        paths = [w.finish() for w in writers]
    results = [ExtractResult(Path(path), len(t), len(t) - first, sec, str(dev))
               for path, t, first, sec in zip(paths, tilings.tilesets, firsts, seconds,
                                              strict=True)]
    for r in results:
        log.info("%s: %d tiles (%d computed) in %.1f s, %.1f tiles/s on %s", r.path, r.n_tiles,
                 r.n_computed, r.seconds, r.tiles_per_s, dev)
    return results


@dataclass
class _SlideTilings:
    """The tilings of one extraction run: their tiles, outputs, and the one slide they share."""

    tilesets: list[TileSet]
    outs: list[Path]
    slide_path: Path
    slide_mpp: float | None

    @classmethod
    def read(cls, jobs: Sequence[tuple[str | Path | TileSet, str | Path]],
             slide: str | Path | None) -> _SlideTilings:
        """Read every tiles file; refuse two equal outputs, tilings of different slides or
        mpp, or a slide that is not the one the tiles were cut from."""
        tilesets = [t if isinstance(t, TileSet) else read_tiles(t) for t, _ in jobs]
        sources = [t for t, _ in jobs]
        outs = [Path(o) for _, o in jobs]
        if len(set(outs)) != len(outs):
            raise InputError(outs[0].parent, "two tilings would write the same features file",
                             "give each tiles file its own output")
        slide_path = Path(slide) if slide is not None else _common_slide(tilesets, sources)
        slide_mpp = _common_mpp(tilesets, sources)
        for tileset, source in zip(tilesets, sources, strict=True):
            check_same_slide(slide_path, tileset, source=source)
        return cls(tilesets, outs, slide_path, slide_mpp)


def _open_tilings(stack: contextlib.ExitStack, tilings: _SlideTilings, enc: Encoder,
                  dev: torch.device, *, opts: ExtractOptions, stain: StainNormalizer | None,
                  stain_attrs: FeatureAttrs, views: tuple[str, ...],
                  handle: SlideHandle) -> tuple[list[FeatureWriter], list[TileRegionDataset]]:
    """Per tiling, its features writer (opened on ``stack``: resumed or allocated) and the
    dataset reading its tiles from the slide."""
    writers, parts = [], []
    for tileset, out in zip(tilings.tilesets, tilings.outs, strict=True):
        tiling_views = () if _is_grid(tileset) else views
        if views and not tiling_views:
            log.info("%s: grid tiling: no augmentation views (they are for training units)",
                     out)
        attrs = _encoder_attrs(enc, dev, tileset, tilings.slide_mpp)
        attrs.update(stain_attrs.to_attrs())
        writers.append(stack.enter_context(FeatureWriter(
            out, tileset, embed_dim=enc.embed_dim, attrs=attrs, dtype=opts.dtype,
            resume=opts.resume, views=tiling_views)))
        parts.append(TileRegionDataset(
            tilings.slide_path, tileset.coords,
            tile_px_level0=tileset.tile_px_level0,
            out_px=enc.preprocessing.input_px, slide_mpp=tilings.slide_mpp, stain=stain,
            views=tiling_views, handle=handle))
    return writers, parts


def _torch_device(opts: ExtractOptions) -> torch.device:
    """The device, with torch's threads set to ``opts.threads``; a batch size or thread count
    below 1 refused."""
    if opts.batch_size < 1:
        raise InputError(None, f"batch size {opts.batch_size} is not positive", "use e.g. 64")
    dev = resolve_device(opts.device)
    if opts.threads is not None:
        if opts.threads < 1:
            raise InputError(None, f"threads {opts.threads} is not positive", "use e.g. 4")
        torch.set_num_threads(int(opts.threads))
    return dev


def _encoder_attrs(enc: Encoder, dev: torch.device, tileset: TileSet,
                   slide_mpp: float | None) -> FeatureAttrs:
    """What a features file records about its encoder and input resolution."""
    out_px = enc.preprocessing.input_px
    tile_px0 = tileset.tile_px_level0
    return FeatureAttrs(
        encoder=enc.name, weights=enc.weights, weights_source=enc.weights_source,
        input_px=out_px, device=str(dev),
        input_mpp=slide_mpp * tile_px0 / out_px if slide_mpp is not None else None,
        feature_layout=json.dumps([list(part) for part in enc.layout]) if enc.layout else None)


def _embed_remaining(dataset: TilingsDataset, writers: list[FeatureWriter],
                     tilings: _SlideTilings, enc: Encoder, dev: torch.device, *,
                     handle: SlideHandle, firsts: list[int], seconds: list[float],
                     opts: ExtractOptions, workers: int) -> None:
    """Embed the rows not yet written (none when every tiling is complete)."""
    if all(w.n_done >= len(t) for w, t in zip(writers, tilings.tilesets, strict=True)):
        return
    slide_now = handle.get()  # an unreadable slide fails before any reader starts
    if workers:
        slide_now.preload()  # a plain image decoded whole is decoded once, not per reader
    try:
        _run(dataset, writers, enc, dev, firsts=firsts, seconds=seconds,
             batch_size=opts.batch_size, workers=workers, progress=opts.progress,
             label=str(tilings.tilesets[0].attrs.sample_id or tilings.slide_path.stem))
    finally:
        dataset.close()


def _is_grid(tileset: TileSet) -> bool:
    return tileset.attrs.is_grid


def _run(dataset: TilingsDataset, writers: list[FeatureWriter], enc: Encoder,
         dev: torch.device, *, firsts: list[int], seconds: list[float], batch_size: int,
         workers: int, progress: bool, label: str) -> None:
    """Embed the remaining rows of every tiling; adds each batch's wall time to ``seconds``."""
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    module = prepare_module(enc, dev)
    amp = autocast_dtype(dev)
    sizes = [len(p) for p in dataset.parts]
    loader = DataLoader(
        dataset, batch_size=None, sampler=_RowRanges(firsts, sizes, batch_size),
        num_workers=workers, pin_memory=cuda, prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    # Outputs wait in a queue of depth 2 on CUDA: batch i is written while batch i+1 runs.
    pending: deque[tuple[int, int, torch.Tensor, torch.cuda.Event | None]] = deque()
    bar = tqdm(total=sum(sizes), initial=sum(firsts), unit="tile", desc=f"extract {label}",
               disable=not progress, mininterval=1.0 if sys.stderr.isatty() else 30.0,
               smoothing=0.1)
    tick = time.perf_counter()
    try:
        with torch.inference_mode(), read_ahead(loader, 0 if workers else READ_AHEAD) as batches:
            for k, start, images in batches:
                if isinstance(images, InputError):
                    raise images  # the rows before it are written and resume from here
                n_views = images.shape[1] if images.ndim == 5 else 1
                out = embed_batch(module, images.flatten(0, 1) if n_views > 1 else images,
                                  enc, dev, amp)
                out = out.unflatten(0, (-1, n_views)) if n_views > 1 else out
                if cuda:
                    host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
                    host.copy_(out, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                    pending.append((k, start, host, event))
                else:
                    pending.append((k, start, out, None))
                while len(pending) > (1 if cuda else 0):
                    tick = _drain(pending, writers, bar, seconds, tick)
            while pending:
                tick = _drain(pending, writers, bar, seconds, tick)
    finally:
        bar.close()


#: Batches a reader thread reads ahead of the forward pass when there are no reader processes
#: (the CPU default below 8 cores): the slide is decoded, resized and stain-normalised while
#: the encoder's threads run (OpenSlide, PIL and numpy release the GIL, and so does torch), so
#: reading costs no wall time of its own. Two batches of 64 tiles are 19 MB.
READ_AHEAD = 2


@contextlib.contextmanager
def read_ahead(items: Iterable, depth: int) -> Iterator[Iterator]:
    """Iterate ``items`` in a thread of its own, up to ``depth`` items ahead (0: inline).

    Items come in order; an exception raised while producing one is raised here, in the
    consumer, when it gets there. Leaving the block (done, or an error in the consumer) stops
    the thread and waits for it, so nothing reads the slide after the block.
    """
    if depth < 1:
        yield iter(items)
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(items, buffer, stop), daemon=True,
                              name="slide2expr-tile-reader")
    thread.start()
    try:
        yield _consume(buffer)
    finally:
        stop.set()
        thread.join()


_END = object()


def _produce(items: Iterable, buffer: queue.Queue, stop: threading.Event) -> None:
    """Put ``(True, item)`` for each item, then ``(True, _END)``; ``(False, exc)`` on an error."""
    try:
        for item in items:
            if not _put(buffer, stop, (True, item)):
                return
        _put(buffer, stop, (True, _END))
    except BaseException as exc:  # handed to the consumer, raised there
        _put(buffer, stop, (False, exc))


def _put(buffer: queue.Queue, stop: threading.Event, entry: tuple[bool, object]) -> bool:
    """Put ``entry`` unless told to stop first; False when stopped."""
    while not stop.is_set():
        try:
            buffer.put(entry, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _consume(buffer: queue.Queue) -> Iterator:
    while True:
        ok, item = buffer.get()
        if not ok:
            raise item
        if item is _END:
            return
        yield item


def _drain(pending: deque, writers: list[FeatureWriter], bar: tqdm, seconds: list[float],
           tick: float) -> float:
    """Write the oldest pending batch; returns the time it was written."""
    k, start, host, event = pending.popleft()
    if event is not None:
        event.synchronize()
    rows = host.numpy()
    writer = writers[k]
    if rows.ndim == 3:  # (B, 1 + V, D): the tile, then its views in the writer's order
        writer.write(start, rows[:, 0], {v: rows[:, 1 + j] for j, v in enumerate(writer.views)})
    else:
        writer.write(start, rows)
    bar.update(host.shape[0])
    now = time.perf_counter()
    seconds[k] += now - tick
    return now


def _common_slide(tilesets: list[TileSet], sources: list[object]) -> Path:
    """The slide every tiles file names (attr ``slide``)."""
    slides = [_slide_from_attrs(t, src) for t, src in zip(tilesets, sources, strict=True)]
    for path, src in zip(slides[1:], sources[1:], strict=True):
        if path != slides[0]:
            raise InputError(src if isinstance(src, str | Path) else None,
                             f"this tiles file is of slide {path}, the first one of {slides[0]}",
                             "extract the tilings of one slide per run")
    return slides[0]


def _common_mpp(tilesets: list[TileSet], sources: list[object]) -> float | None:
    """The slide mpp every tiles file records (attr ``slide_mpp``), or None."""
    mpps = [_float_or_none(t.attrs.slide_mpp) for t in tilesets]
    for mpp, src in zip(mpps[1:], sources[1:], strict=True):
        if mpp != mpps[0]:
            raise InputError(src if isinstance(src, str | Path) else None,
                             f"this tiles file records slide mpp {mpp}, the first one {mpps[0]}",
                             "tile every tiling of the slide with the same mpp")
    return mpps[0]


#: Relative difference of mpp beyond which two slides are not the same scan.
MPP_TOLERANCE = 0.01


def check_same_slide(slide_path: Path, tiles: TileSet, *, source: object) -> None:
    """Refuse a slide that is not the one the tiles were cut from.

    Compared with what the tiles file recorded: the file's fingerprint
    (``slide_fingerprint``, :func:`~slide2expr.hashing.file_fingerprint`), the level-0 size
    and, when both come from the slides' metadata, the mpp. A missing record is not
    checked (tiles files of other tools or older versions).

    Raises
    ------
    InputError
        Naming the slide, what differs and the fix.
    """
    attrs = tiles.attrs
    made_from = f"the slide {source} was made from" if isinstance(source, str | Path) \
        else "the tiles' slide"
    fix = "pass the slide the tiles were made from with --slide, or tile this slide first"
    recorded = str(attrs.slide_fingerprint or "")
    if recorded and slide_path.is_file() and file_fingerprint(slide_path) == recorded:
        return  # the very file (moved or copied)
    with open_slide(slide_path, sheet_mpp=_float_or_none(attrs.slide_mpp),
                    require_mpp=False) as s:
        size, mpp, mpp_source = s.dimensions, s.mpp, s.mpp_source
    width, height = attrs.level0_width, attrs.level0_height
    if width is not None and height is not None and (int(width), int(height)) != tuple(size):
        raise InputError(slide_path, f"is not {made_from}: its level-0 size is "
                         f"{size[0]} x {size[1]} px, the tiles' slide's {int(width)} x "
                         f"{int(height)} px", fix)
    tiles_mpp = _float_or_none(attrs.slide_mpp)
    if (mpp is not None and tiles_mpp is not None and mpp_source == "metadata"
            and attrs.mpp_source == "metadata"
            and abs(mpp - tiles_mpp) > MPP_TOLERANCE * tiles_mpp):
        raise InputError(slide_path, f"is not {made_from}: its mpp is {mpp:g} um/px, the "
                         f"tiles' slide's {tiles_mpp:g} um/px", fix)
    if recorded and slide_path.is_file():
        raise InputError(slide_path, f"is not {made_from}: its content differs (checksum of "
                         "its first and last MiB and size, attr slide_fingerprint)", fix)


def _slide_from_attrs(tiles: TileSet, source: object) -> Path:
    slide = tiles.attrs.slide
    if not slide:
        raise InputError(source if isinstance(source, str | Path) else None,
                         "the tiles file does not name its slide (attr 'slide')",
                         "pass the slide with --slide")
    return Path(str(slide))


def _float_or_none(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) and out > 0 else None
