"""Label Studio's brush RLE: the run-length code of its brush masks, without its library.

The format is thi.ng's ``rle-pack`` (github.com/thi-ng/umbrella, packages/rle-pack), which
the Label Studio frontend writes and ``label_studio_converter/brush.py`` (label-studio-converter
0.0.59, now ``label_studio_sdk/converter/brush.py``) decodes (``decode_rle``) and encodes
(``encode_rle``, ``mask2rle``).  A stream of bits, most significant bit of each byte first:

* header: value count (32 bits), word size - 1 (5 bits), four run-length field sizes - 1
  (4 bits each);
* then blocks until ``count`` values are out: a flag bit, a 2-bit index ``t`` into the field
  sizes, a length ``n`` in ``sizes[t]`` bits; flag 1 = the next word repeated ``n + 1`` times,
  flag 0 = the next ``n + 1`` words as they are.

The values are the RGBA bytes of the image, row by row; a mask is the alpha channel.
:func:`encode_rle` writes the very bits the converter's ``encode_rle`` writes (word size 8,
field sizes 3, 4, 8, 16, a run of 1 as a one-word literal, runs over 256 in 16-bit fields of
at most 65536, and its padding: zero bits up to the next byte, a whole zero byte when the
bits already end on one); :func:`decode_rle` reads any encoder's stream (the frontend's too).
The converter itself needs pandas, nltk and lxml, too much for one codec.
"""
from __future__ import annotations

import functools

import numpy as np

from ..jit import numba_compiled

LS_RLE_SIZES = (3, 4, 8, 16)
MASK_ALPHA_THRESHOLD = 128  # alpha >= this = painted (brush edges may be anti-aliased)


class BrushRLEError(ValueError):
    """A byte list that is not a complete brush RLE stream."""


class _BitReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.bits = len(data) * 8

    def read(self, n: int) -> int:
        if n == 0:
            return 0
        end = self.pos + n
        if end > self.bits:
            raise BrushRLEError(f"stream ends inside a field (bit {self.pos} of {self.bits})")
        first, last = self.pos >> 3, (end + 7) >> 3
        word = int.from_bytes(self.data[first:last], "big")
        value = (word >> ((last << 3) - end)) & ((1 << n) - 1)
        self.pos = end
        return value

    def read_words(self, count: int, size: int) -> np.ndarray:
        end = self.pos + count * size
        if end > self.bits:
            raise BrushRLEError(f"stream ends inside a literal block (bit {self.pos} of {self.bits})")
        first = self.pos >> 3
        bits = np.unpackbits(np.frombuffer(self.data, np.uint8, (end + 7 >> 3) - first, first))
        bits = bits[self.pos - (first << 3): end - (first << 3)].reshape(count, size)
        self.pos = end
        return bits.astype(np.uint64) @ (np.uint64(1) << np.arange(size - 1, -1, -1, dtype=np.uint64))


def decode_rle(rle: list[int] | bytes | np.ndarray) -> np.ndarray:
    """A brush RLE (list of byte values, as in the export's ``"rle"``) -> its flat values
    (uint8 for word sizes up to 8 bits, else uint16 / uint32)."""
    try:
        data = bytes(bytearray(rle))
    except (TypeError, ValueError) as e:
        raise BrushRLEError(f"rle is not a list of byte values 0..255 ({e})") from None
    reader = _BitReader(data)
    if reader.bits < 53:
        raise BrushRLEError(f"rle of {len(data)} bytes is shorter than its header")
    count = reader.read(32)
    word_size = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, np.uint8 if word_size <= 8 else np.uint16 if word_size <= 16 else np.uint32)
    kernel = _compiled_blocks()
    if kernel is None:
        _read_blocks(reader, out, word_size, sizes)
        return out
    wide = np.zeros(count, np.uint32)
    status = kernel(np.frombuffer(data, np.uint8), reader.pos, word_size, np.array(sizes, np.int64), wide)
    if status < 0:  # a bad stream: the Python reader names the fault
        _read_blocks(reader, out, word_size, sizes)
        return out
    out[:] = wide
    return out


def _read_blocks(reader: _BitReader, out: np.ndarray, word_size: int, sizes: list[int]) -> None:
    """The blocks after the header into ``out``, in Python (numpy for literal words)."""
    i, count = 0, out.size
    while i < count:
        repeat = reader.read(1)
        n = reader.read(sizes[reader.read(2)]) + 1
        if i + n > count:
            raise BrushRLEError(f"a block of {n} values runs past the stream's {count} values")
        if repeat:
            out[i:i + n] = reader.read(word_size)
        else:
            out[i:i + n] = reader.read_words(n, word_size)
        i += n


def _blocks_loops(data: np.ndarray, pos: int, word_size: int, sizes: np.ndarray,
                  out: np.ndarray) -> int:  # pragma: no cover - compiled by numba
    """:func:`_read_blocks` bit by bit, for numba (a frontend mask of a large image has millions
    of short blocks); 0, or -1 where the stream is cut short or a block overruns."""
    nbits = data.size * 8
    i, count = 0, out.size
    while i < count:
        if pos + 3 > nbits:
            return -1
        repeat = (data[pos >> 3] >> (7 - (pos & 7))) & 1
        t = 0
        for _ in range(2):
            pos += 1
            t = (t << 1) | ((data[pos >> 3] >> (7 - (pos & 7))) & 1)
        pos += 1
        width = sizes[t]
        if pos + width > nbits:
            return -1
        n = 0
        for _ in range(width):
            n = (n << 1) | ((data[pos >> 3] >> (7 - (pos & 7))) & 1)
            pos += 1
        n += 1
        if i + n > count:
            return -1
        words = 1 if repeat else n
        if pos + words * word_size > nbits:
            return -1
        for k in range(words):
            v = 0
            for _ in range(word_size):
                v = (v << 1) | ((data[pos >> 3] >> (7 - (pos & 7))) & 1)
                pos += 1
            if repeat:
                for j in range(i, i + n):
                    out[j] = v
            else:
                out[i + k] = v
        i += n
    return 0


@functools.cache
def _compiled_blocks():
    """numba-compiled :func:`_blocks_loops`, or None (numba is optional: the Python reader
    gives the same values)."""
    return numba_compiled(_blocks_loops)


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(run lengths, run values) of a 1-d array."""
    change = np.flatnonzero(values[1:] != values[:-1])
    ends = np.append(change, values.size - 1)
    lengths = np.diff(np.append(-1, ends))
    return lengths, values[ends]


def encode_rle(values: np.ndarray) -> list[int]:
    """Flat uint8 values -> the brush RLE byte list, bit for bit the converter's ``encode_rle``."""
    values = np.asarray(values).ravel()
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError("brush RLE values must be 0..255 (word size 8)")
    values = values.astype(np.int64)
    header = (values.size << 21) | (7 << 16) | sum((s - 1) << (12 - 4 * k) for k, s in enumerate(LS_RLE_SIZES))
    codes, widths = [np.array([header], np.int64)], [np.array([53], np.int64)]
    if values.size:
        lengths, run_values = _runs(values)
        long = lengths > 256  # split into 16-bit blocks of 65536, the last with the rest
        pieces = np.where(long, (lengths + 65535) // 65536, 1)
        block_run = np.repeat(np.arange(lengths.size), pieces)
        first_of_run = np.cumsum(pieces) - pieces
        piece_no = np.arange(block_run.size) - np.repeat(first_of_run, pieces)
        n = np.where(long[block_run],
                     np.where(piece_no < pieces[block_run] - 1, 65536,
                              lengths[block_run] - (pieces[block_run] - 1) * 65536),
                     lengths[block_run])
        t = np.where(long[block_run], 3, np.searchsorted([8, 16, 256], n))
        field = np.array(LS_RLE_SIZES, np.int64)[t]
        flag = ((n > 1) | long[block_run]).astype(np.int64)  # the converter flags every long run
        value = run_values[block_run]
        # a block: flag (1) | t (2) | n - 1 (field) | value (8); a single value is literal 0 00 000 v
        codes.append((((flag << 2 | t) << field | (n - 1)) << 8) | value)
        widths.append(3 + field + 8)
    codes_all, widths_all = np.concatenate(codes), np.concatenate(widths)
    bits = _to_bits(codes_all, widths_all)
    pad = 8 - bits.size % 8  # the converter pads 1..8 zero bits
    return np.packbits(np.concatenate([bits, np.zeros(pad, np.uint8)])).tolist()


def _to_bits(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Each code's low ``width`` bits, most significant first, concatenated."""
    out = np.empty(int(widths.sum()), np.uint8)
    starts = np.cumsum(widths) - widths
    for width in np.unique(widths):
        rows = np.flatnonzero(widths == width)
        shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
        bits = ((codes[rows, None] >> shifts) & 1).astype(np.uint8)
        out[(starts[rows, None] + np.arange(width)).ravel()] = bits.ravel()
    return out


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """A boolean (H, W) mask -> brush RLE of RGBA values (painted = 255 in all four bytes,
    as the converter's ``mask2rle`` writes a 0/255 mask)."""
    return encode_rle(np.repeat(np.asarray(mask, bool).ravel().astype(np.uint8) * 255, 4))


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """Brush RLE -> boolean (H, W) mask: alpha >= :data:`MASK_ALPHA_THRESHOLD`."""
    values = decode_rle(rle)
    if values.size != height * width * 4:
        raise BrushRLEError(f"rle holds {values.size} values; a {width}x{height} RGBA mask has {height * width * 4}")
    return values.reshape(height, width, 4)[:, :, 3] >= MASK_ALPHA_THRESHOLD
