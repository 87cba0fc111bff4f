"""One chunk of a local store array decoded straight from its file: the hot path of every store reader.

zarr-python 3 reads a chunk through an asyncio event loop, its codec pipeline and buffer prototypes, then copies
the chunk into the selection's output: tens of microseconds of Python per chunk plus one copy, on top of the
decompression. The chunked arrays of a cascadekit store use one codec chain, ``bytes -> zstd | blosc ->
crc32c`` (``crc32c`` from format version 2 on; strings: ``vlen-utf8`` instead of ``bytes``; see
docs/dataset_format.md). For such an array :class:`ChunkDecoder` reads the chunk file in one call, checks its
crc32c once, and decompresses with numcodecs (the library zarr's own codecs call; its zstd holds the GIL, as
measured: two threads take twice one thread's time). A numeric chunk is handed out as a read-only numpy view of the decompressed bytes (no further copy), a
string chunk as zarr returns it (numpy ``StringDType``).

:func:`decoder_for` returns None for anything else (object storage, another codec chain or byte order); those
chunks are read by zarr. Both paths give the same values (``tests/test_reader_fast.py``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from numcodecs import Blosc, VLenUTF8, Zstd

from cascadekit.datasets.integrity import DAMAGED, MISSING, crc32c_ok

#: zarr codec class name -> a numcodecs decoder of its bytes (zstd and blosc frames describe themselves)
_COMPRESSORS = {"ZstdCodec": Zstd, "BloscCodec": Blosc}


class ChunkError(Exception):
    """A chunk cannot be used: ``kind`` is ``"missing"`` or ``"damaged"``, ``detail`` says why; ``decoding``: its
    file was read but its bytes are bad. ``state``: the phrase readers put after "chunk i (rows a..b)"."""

    def __init__(self, kind: str, detail: str, decoding: bool = False):
        self.kind, self.detail = kind, detail
        self.state = f"is damaged and cannot be read ({detail})" if decoding else f"is {kind} ({detail})"
        super().__init__(self.state)


class ChunkDecoder:
    """Decoded chunks of one zarr v3 array of a local store (see the module docstring; build with :func:`decoder_for`).

    ``read(i)`` -> read-only array of shape ``chunk_shape`` (the last chunk of an array is stored padded to the
    full chunk shape, as zarr writes it). A missing file is ``ChunkError("missing", ...)`` when ``presence``,
    else the chunk of fill values (zarr's reading of it); an empty, truncated or bit-flipped file is
    ``ChunkError("damaged", ...)``.
    """

    def __init__(self, folder: Path, key_of, chunk_shape: tuple[int, ...], dtype: np.dtype, fill_value,
                 compressor, checksum: bool, presence: bool):
        self.folder, self.key_of = folder, key_of
        self.chunk_shape, self.dtype = tuple(chunk_shape), dtype
        self.strings = dtype.kind == "T"  # vlen-utf8 chunks; otherwise raw native-order bytes
        self.nbytes = int(np.prod(self.chunk_shape)) * dtype.itemsize
        self.fill_value, self.compressor = fill_value, compressor
        self.checksum, self.presence = checksum, presence

    def read(self, i: int) -> np.ndarray:
        """Chunk ``i`` along the row axis, shape ``chunk_shape`` (rows ``i*c .. (i+1)*c-1``)."""
        raw = self._raw(i)
        if raw is None:
            block = np.full(self.chunk_shape, self.fill_value, self.dtype)
        else:
            block = self._decode(_checked(raw) if self.checksum else raw)
        block.flags.writeable = False  # shared by every caller of a ChunkCache
        return block

    def read_into(self, i: int, out: np.ndarray) -> bool:
        """Decompress chunk ``i`` straight into ``out`` (C-contiguous, ``chunk_shape``, this dtype), saving the
        copy out of a decoded chunk. Only for a checksummed numeric array, where the crc32c proves the frame is
        the full chunk zarr wrote; returns False (nothing written) otherwise: use :meth:`read`."""
        if not self.checksum or self.strings or out.nbytes != self.nbytes or out.dtype != self.dtype \
                or not out.flags.c_contiguous:
            return False
        raw = self._raw(i)
        if raw is None:
            out[...] = self.fill_value
            return True
        payload = _checked(raw)
        try:
            if self.compressor is None:
                out.reshape(-1).view(np.uint8)[:] = payload
            else:
                self.compressor.decode(payload, out=out)
        except Exception as e:  # noqa: BLE001 - as in _decode
            raise ChunkError(DAMAGED, f"cannot be decoded: {type(e).__name__}: {str(e)[:80]}", True) from None
        return True

    def _decode(self, payload: np.ndarray) -> np.ndarray:
        try:
            data = payload if self.compressor is None else self.compressor.decode(payload)
            if self.strings:
                return _VLEN.decode(data).reshape(self.chunk_shape).astype(self.dtype, copy=False)
        except Exception as e:  # noqa: BLE001 - numcodecs raises RuntimeError / ValueError for bad frames
            raise ChunkError(DAMAGED, f"cannot be decoded: {type(e).__name__}: {str(e)[:80]}", True) from None
        size = memoryview(data).nbytes
        if size != self.nbytes:
            raise ChunkError(DAMAGED, f"decodes to {size} bytes, not {self.nbytes}", True)
        return np.frombuffer(data, self.dtype).reshape(self.chunk_shape)

    def _raw(self, i: int) -> np.ndarray | None:
        path = self.folder / self.key_of(i)
        try:
            raw = np.fromfile(path, np.uint8)
        except FileNotFoundError:
            if self.presence:
                raise ChunkError(MISSING, "chunk file deleted or never written") from None
            return None
        except OSError as e:
            raise ChunkError(DAMAGED, f"cannot read the chunk file: {e.strerror or e}") from None
        if raw.size == 0:
            raise ChunkError(DAMAGED, "empty chunk file")
        return raw


_VLEN = VLenUTF8()


def _checked(raw: np.ndarray) -> np.ndarray:
    """The payload of a chunk whose last 4 bytes are the crc32c (little endian) of the rest, or ChunkError."""
    if not crc32c_ok(raw):
        raise ChunkError(DAMAGED, "crc32c checksum mismatch: truncated or overwritten", True)
    return raw[:-4]


def decoder_for(arr, presence: bool) -> ChunkDecoder | None:
    """A :class:`ChunkDecoder` of zarr array ``arr`` when it is a local zarr v3 array with the codec chain
    ``bytes (native order, numbers) | vlen-utf8 (strings) -> [zstd | blosc] -> [crc32c]``; None otherwise."""
    root = getattr(arr.store, "root", None)
    meta = arr.metadata
    if root is None or getattr(meta, "zarr_format", None) != 3 or not hasattr(meta.chunk_grid, "chunk_shape"):
        return None
    names = [type(c).__name__ for c in meta.codecs]
    if not (names and isinstance(arr.dtype, np.dtype) and _array_bytes_ok(names[0], meta.codecs[0], arr.dtype)):
        return None
    rest = names[1:]
    checksum = rest[-1:] == ["Crc32cCodec"]
    rest = rest[:-1] if checksum else rest
    if len(rest) > 1 or (rest and rest[0] not in _COMPRESSORS):
        return None
    compressor = _COMPRESSORS[rest[0]]() if rest else None
    zeros = (0,) * (arr.ndim - 1)
    return ChunkDecoder(Path(root) / arr.path, lambda i: meta.encode_chunk_key((i, *zeros)),
                        meta.chunk_grid.chunk_shape, arr.dtype, meta.fill_value, compressor, checksum, presence)


def _array_bytes_ok(name: str, codec, dtype: np.dtype) -> bool:
    """The first codec turns a chunk into bytes in a way :class:`ChunkDecoder` undoes."""
    if name == "VLenUTF8Codec":
        return dtype.kind == "T"
    endian = getattr(codec, "endian", None)
    endian = getattr(endian, "value", endian)
    return name == "BytesCodec" and dtype.kind in "biuf" and (dtype.itemsize == 1 or endian == sys.byteorder)
