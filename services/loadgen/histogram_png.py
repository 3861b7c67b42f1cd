"""The latency histogram as a PNG: with matplotlib when it is installed, else drawn here.

matplotlib is not a dependency of callray (it is large and only this picture needs it), so the
fallback rasterises the bars with numpy and writes the PNG by hand: signature, ``IHDR`` (8-bit
RGB), one zlib-compressed ``IDAT`` of filter-0 scanlines, ``IEND``, each chunk with its CRC-32
(PNG specification, ISO/IEC 15948 §5 and §11.2). Axis numbers use a 3x5 pixel digit font.
"""

from __future__ import annotations

import importlib
import struct
import zlib
from pathlib import Path
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from services.loadgen.report import Histogram

__all__ = ["encode_png", "render_histogram", "write_histogram_png"]

_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_WIDTH, _HEIGHT = 640, 360
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 20, 20, 40
_BAR: Final = (52, 101, 164)
_AXIS: Final = (0, 0, 0)
_SCALE: Final = 2  # font pixels per glyph pixel
_GLYPHS: Final = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001001001",
    "8": "111101111101111",
    "9": "111101111001111",
    ".": "000000000000010",
    "m": "000000111111101",
    "s": "000011110001110",
    " ": "000000000000000",
}

Renderer = Literal["matplotlib", "builtin"]


def write_histogram_png(
    path: str | Path, histogram: Histogram, *, xlabel: str, use_matplotlib: bool = True
) -> Renderer:
    """Write the histogram to ``path``; returns which renderer drew it."""
    if use_matplotlib and _write_with_matplotlib(Path(path), histogram, xlabel):
        return "matplotlib"
    Path(path).write_bytes(encode_png(render_histogram(histogram)))
    return "builtin"


def _write_with_matplotlib(path: Path, histogram: Histogram, xlabel: str) -> bool:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return False
    matplotlib.use("Agg")  # no display needed
    pyplot = importlib.import_module("matplotlib.pyplot")
    figure, axes = pyplot.subplots(figsize=(8, 4.5), dpi=100)
    edges = np.asarray(histogram.edges_ms)
    axes.bar(edges[:-1], histogram.counts, width=np.diff(edges), align="edge")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("count")
    figure.savefig(path, format="png")
    pyplot.close(figure)
    return True


def render_histogram(histogram: Histogram) -> NDArray[np.uint8]:
    """An RGB image (height, width, 3) of the bars, the axes and their end values."""
    image = np.full((_HEIGHT, _WIDTH, 3), 255, dtype=np.uint8)
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
    counts = histogram.counts
    peak = max(counts, default=0)
    base = _TOP + plot_h
    for i, count in enumerate(counts):
        x0 = _LEFT + i * plot_w // len(counts)
        x1 = _LEFT + (i + 1) * plot_w // len(counts) - 1  # one pixel gap between bars
        height = 0 if peak == 0 else round(count / peak * plot_h)
        image[base - height : base, x0:x1] = _BAR
    image[_TOP : base + 1, _LEFT - 1] = _AXIS
    image[base, _LEFT - 1 : _LEFT + plot_w] = _AXIS
    top_ms = histogram.edges_ms[-1] if histogram.edges_ms else 0.0
    right_label = f"{top_ms:g} ms"
    _text(image, "0", _LEFT - _text_width("0") // 2, base + 8)
    _text(
        image,
        f"{top_ms / 2:g}",
        _LEFT + plot_w // 2 - _text_width(f"{top_ms / 2:g}") // 2,
        base + 8,
    )
    _text(image, right_label, _WIDTH - 4 - _text_width(right_label), base + 8)
    _text(image, str(peak), max(0, _LEFT - 6 - _text_width(str(peak))), _TOP)
    return image


def _text_width(text: str) -> int:
    return len(text) * 4 * _SCALE


def _text(image: NDArray[np.uint8], text: str, x: int, y: int) -> None:
    for char in text:
        glyph = _GLYPHS.get(char, _GLYPHS[" "])
        for index, bit in enumerate(glyph):
            if bit == "1":
                gx, gy = x + (index % 3) * _SCALE, y + (index // 3) * _SCALE
                image[gy : gy + _SCALE, max(gx, 0) : max(gx + _SCALE, 0)] = _AXIS
        x += 4 * _SCALE


def encode_png(rgb: NDArray[np.uint8]) -> bytes:
    """A truecolour PNG of an ``(height, width, 3)`` uint8 array."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a (height, width, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    height, width, _ = rgb.shape
    # Each scanline starts with its filter type; 0 (None) keeps the encoder trivial.
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], 1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
