"""Row bands of a baseline JPEG with restart markers, decoded on demand.

A JPEG whose restart interval spans whole rows of MCUs (Photoshop and many scanners write one
restart marker per MCU row; the her2st H&E images do) can be decoded a band of rows at a
time: the entropy-coded data between two restart markers depends on nothing before them, so
a band is the file's own header with the band's height in its frame header, followed by the
band's intervals with their restart markers renumbered from 0. A band is decoded with one
restart interval more above and below than it keeps, so the chroma upsampling at its edges
sees the same neighbouring rows as a whole-image decode: the pixels equal those of decoding
the whole image (libjpeg-turbo through imagecodecs either way).

:class:`JpegBands` keeps the most recently used bands up to a byte budget
(:data:`BAND_CACHE_BYTES`), so reading tiles in roughly row order decodes each band about
once, and memory is bounded whatever the image's size.
"""

from __future__ import annotations

import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Rows of the image one cached band holds (rounded to whole restart intervals).
BAND_ROWS = 256
#: Bytes of decoded bands kept between reads, the most recently used (a read that needs more
#: holds its bands until it has copied them).
BAND_CACHE_BYTES = 64 * 2**20

_SOF_BASELINE = (0xC0, 0xC1)  # baseline and extended sequential, Huffman-coded
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: markers without a length field
_RESTART = re.compile(rb"\xff[\xd0-\xd7]")


@dataclass(frozen=True)
class RestartLayout:
    """Where a restart-marked JPEG's pieces are.

    Attributes
    ----------
    header
        The file's bytes from SOI up to (not including) the SOS segment.
    height_at
        Offset in ``header`` of the frame header's 2-byte image height.
    sos
        The SOS segment (marker included).
    intervals
        ``(start, stop)`` byte ranges of each restart interval's entropy-coded data in the
        file, without the restart marker after it.
    rows_per_interval
        Image rows one restart interval covers.
    width, height
        Image size in pixels.
    """

    header: bytes
    height_at: int
    sos: bytes
    intervals: tuple[tuple[int, int], ...]
    rows_per_interval: int
    width: int
    height: int


def restart_layout(data: bytes) -> RestartLayout | None:
    """The layout of ``data`` if it is a single-scan baseline JPEG whose restart intervals
    are whole MCU rows, else None (decode it whole)."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, frame, restart = 2, None, 0
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        segment = data[pos + 4:pos + 2 + length]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _SOF_BASELINE:
                return None  # progressive, lossless or arithmetic-coded
            frame = (pos + 5, segment)
        elif marker == 0xDD and length >= 4:
            restart = struct.unpack(">H", segment[:2])[0]
        elif marker == 0xDA:
            return _layout(data, pos, length, frame, restart)
        pos += 2 + length
    return None


def _layout(data: bytes, sos_at: int, sos_length: int,
            frame: tuple[int, bytes] | None, restart: int) -> RestartLayout | None:
    """The layout from the SOS at ``sos_at``, given the frame header and restart interval."""
    if frame is None or restart <= 0:
        return None
    height_at, sof = frame
    precision, height, width, n_comp = sof[0], *struct.unpack(">HH", sof[1:5]), sof[5]
    n_scan_comp = data[sos_at + 4]
    if precision != 8 or height == 0 or n_comp != 3 or n_scan_comp != n_comp:
        return None  # 12-bit, height given later (DNL), not 3 channels, a scan per channel
    h_max = max(sof[7 + 3 * k] >> 4 for k in range(n_comp))
    v_max = max(sof[7 + 3 * k] & 15 for k in range(n_comp))
    mcus_per_row = -(-width // (8 * h_max))
    if restart % mcus_per_row:
        return None  # intervals that start inside a row of MCUs
    rows_per_interval = restart // mcus_per_row * 8 * v_max
    scan_start = sos_at + 2 + sos_length
    end = data.rfind(b"\xff\xd9")
    if end < scan_start:
        return None
    cuts = [m.start() for m in _RESTART.finditer(data, scan_start, end)]
    starts = [scan_start] + [c + 2 for c in cuts]
    intervals = tuple(zip(starts, [*cuts, end], strict=True))
    if len(intervals) != -(-height // rows_per_interval):
        return None  # a missing or extra marker: not a layout to cut by rows
    return RestartLayout(header=data[:sos_at], height_at=height_at,
                         sos=data[sos_at:scan_start], intervals=intervals,
                         rows_per_interval=rows_per_interval, width=width, height=height)


class JpegBands:
    """Rows of a restart-marked JPEG, decoded band by band and cached up to a byte budget.

    Parameters
    ----------
    path
        The JPEG file (read once, kept compressed in memory).
    layout
        Its :func:`restart_layout`.
    cache_bytes
        Decoded bytes kept between reads.
    """

    def __init__(self, path: Path, data: bytes, layout: RestartLayout,
                 cache_bytes: int = BAND_CACHE_BYTES) -> None:
        self.path = path
        self._data = data
        self.layout = layout
        self.cache_bytes = cache_bytes
        per = layout.rows_per_interval
        self.band_rows = per * max(1, round(BAND_ROWS / per))
        self._bands: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        #: Bands decoded so far (a band evicted and needed again counts again).
        self.decoded = 0

    @classmethod
    def open(cls, path: Path) -> JpegBands | None:
        """The bands of the JPEG at ``path``, or None when it cannot be cut into rows."""
        data = Path(path).read_bytes()
        layout = restart_layout(data)
        return cls(Path(path), data, layout) if layout is not None else None

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded bands held now."""
        return sum(b.nbytes for b in self._bands.values())

    def rows(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``[y0, y1)`` and columns ``[x0, x1)`` of the image (inside it), ``(H, W, 3)``."""
        out = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
        first, last = y0 // self.band_rows, (y1 - 1) // self.band_rows
        with self._lock:
            for index in range(first, last + 1):
                band = self._band(index)
                top = index * self.band_rows
                lo, hi = max(y0, top), min(y1, top + band.shape[0])
                out[lo - y0:hi - y0] = band[lo - top:hi - top, x0:x1]
            self._evict()
        return out

    def _band(self, index: int) -> np.ndarray:
        band = self._bands.get(index)
        if band is None:
            band = self._decode(index)
            self._bands[index] = band
            self.decoded += 1
        self._bands.move_to_end(index)
        return band

    def _evict(self) -> None:
        """Drop the least recently used bands until the rest fit the budget."""
        total = self.cached_bytes
        while total > self.cache_bytes and self._bands:
            total -= self._bands.popitem(last=False)[1].nbytes

    def _decode(self, index: int) -> np.ndarray:
        """Band ``index``: its rows decoded with one restart interval of margin each side."""
        import imagecodecs

        layout, per = self.layout, self.layout.rows_per_interval
        top = index * self.band_rows
        bottom = min(top + self.band_rows, layout.height)
        first = max(0, top // per - 1)
        stop = min(len(layout.intervals), -(-bottom // per) + 1)
        decoded_top = first * per
        height = min(stop * per, layout.height) - decoded_top
        header = bytearray(layout.header)
        header[layout.height_at:layout.height_at + 2] = struct.pack(">H", height)
        parts = [bytes(header), layout.sos]
        for n, (a, b) in enumerate(layout.intervals[first:stop]):
            parts.append(self._data[a:b])
            parts.append(bytes((0xFF, 0xD0 + n % 8)) if first + n + 1 < stop else b"\xff\xd9")
        pixels = imagecodecs.jpeg8_decode(b"".join(parts))
        if pixels.shape != (height, layout.width, 3):
            raise ValueError(f"a band decoded to {pixels.shape}, not "
                             f"{(height, layout.width, 3)}")
        return pixels[top - decoded_top:bottom - decoded_top].copy()
