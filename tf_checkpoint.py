"""TensorFlow's checkpoint format (a "tensor bundle"), read without TensorFlow.

A checkpoint with prefix `model.ckpt` is two files:
- `model.ckpt.index`: an SSTable (LevelDB's table format) mapping each variable name to a
  BundleEntryProto (dtype, shape, offset, size, CRC32C of the bytes) and the empty key "" to a
  BundleHeaderProto;
- `model.ckpt.data-00000-of-00001`: the tensors' raw little-endian bytes, one after another.

This module parses the index with a few lines of protobuf and SSTable decoding and hands out NumPy
views of a read-only memory map of the data file: no copy, no TensorFlow. It knows tensors, not
models: which names and shapes a GPT-2 needs is utils.py's business.
"""
import math
import mmap
import os
from typing import Iterator, NamedTuple

import google_crc32c
import numpy as np

from errors import GPT2Error

INDEX_SUFFIX = ".index"
DATA_SUFFIX = ".data-00000-of-00001"  # one shard: OpenAI's checkpoints, and this reader, have no more
TABLE_MAGIC = 0xDB4775248B80FB57  # last 8 bytes of every SSTable file
FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the magic
BLOCK_TRAILER_SIZE = 5  # 1 byte compression type + 4 bytes masked crc32c
DT_FLOAT = 1  # tensorflow.DataType enum value of float32
NUMPY_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 9: "<i8", 19: "<f2"}  # DataType -> NumPy, the numeric ones


class CheckpointError(GPT2Error):
    """A checkpoint file is missing, unreadable or damaged; the message names the file."""


class CorruptCheckpoint(ValueError):
    """Raised while parsing bytes; read_index turns it into a CheckpointError naming the file."""


class BundleEntry(NamedTuple):
    """Where one tensor's bytes are in the data file, and what they hold."""

    dtype: int  # tensorflow.DataType enum value
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int  # in bytes
    crc32c: int  # masked CRC32C of the tensor's bytes, as TensorFlow wrote it


# ---------------------------------------------------------------- CRC32C

CRC_PIECE = 1 << 20  # bytes of a memory-mapped array handed to google-crc32c at a time
CRC32C_IN_C = google_crc32c.implementation == "c"  # False: its pure-Python fallback, about 8 MB/s


def crc32c(data: bytes | np.ndarray) -> int:
    """The CRC32C (Castagnoli) of `data`: bytes, or a uint8 array such as a slice of the mapped data file.

    google-crc32c's C code uses the CPU's CRC instruction. It takes bytes-like objects that need no
    release, which a memory map is not, so an array goes in 1 MiB copies that stay in the CPU cache:
    43 ms for the 475 MiB of 124M (README, "Speed")."""
    if isinstance(data, bytes):
        return google_crc32c.value(data)
    crc = 0
    for start in range(0, data.size, CRC_PIECE):
        crc = google_crc32c.extend(crc, data[start : start + CRC_PIECE].tobytes())
    return crc


def mask_crc(crc: int) -> int:
    """LevelDB stores CRCs 'masked' so that a CRC of data containing CRCs stays well distributed."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------- protobuf and SSTable decoding


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a protobuf/LevelDB varint at buf[pos]; return (value, position after it)."""
    value = 0
    for shift in range(0, 70, 7):  # at most 10 bytes: a longer run is corruption, not a loop
        if pos >= len(buf):
            raise CorruptCheckpoint("varint runs past the end of its buffer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise CorruptCheckpoint("varint longer than 10 bytes")


def parse_protobuf(buf: bytes) -> dict[int, list]:
    """Decode one protobuf message into {field_number: [values]} (ints, or bytes for sub-messages)."""
    fields, pos = {}, 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:  # varint
            value, pos = read_varint(buf, pos)
        elif wire_type == 1:  # fixed64
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire_type == 2:  # length-delimited: bytes, string or sub-message
            length, pos = read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire_type == 5:  # fixed32
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise CorruptCheckpoint(f"unknown protobuf wire type {wire_type}")
        if pos > len(buf):
            raise CorruptCheckpoint("protobuf field runs past the end of its message")
        fields.setdefault(number, []).append(value)
    return fields


def read_block(table: bytes, offset: int, size: int) -> bytes:
    """Return the contents of the SSTable block at [offset, offset + size), checking its CRC."""
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(table):
        raise CorruptCheckpoint("a block handle points past the end of the file")
    contents, compression = table[offset:end], table[end]
    stored_crc = int.from_bytes(table[end + 1 : end + 5], "little")
    if mask_crc(crc32c(table[offset : end + 1])) != stored_crc:
        raise CorruptCheckpoint(f"checksum mismatch in the block at byte {offset}")
    if compression != 0:
        raise CorruptCheckpoint(f"compressed blocks (type {compression}) are not supported")
    return contents


def iter_block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) from a block: prefix-compressed keys, then restart offsets, then their count."""
    if len(block) < 4:
        raise CorruptCheckpoint("block too short")
    n_restarts = int.from_bytes(block[-4:], "little")
    entries_end = len(block) - 4 - 4 * n_restarts
    if entries_end < 0:
        raise CorruptCheckpoint("block restart array larger than the block")
    pos, key = 0, b""
    while pos < entries_end:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        value_length, pos = read_varint(block, pos)
        if shared > len(key) or pos + unshared + value_length > entries_end:
            raise CorruptCheckpoint("block entry runs past the end of the block")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_length]
        pos += value_length


def read_table(table: bytes) -> dict[bytes, bytes]:
    """Decode a whole SSTable (bytes) into {key: value}: footer -> index block -> data blocks."""
    if len(table) < FOOTER_SIZE or int.from_bytes(table[-8:], "little") != TABLE_MAGIC:
        raise CorruptCheckpoint("not an SSTable (bad length or magic number)")
    footer = table[-FOOTER_SIZE:]
    _, pos = read_varint(footer, 0)  # metaindex handle: offset, size (unused)
    _, pos = read_varint(footer, pos)
    index_offset, pos = read_varint(footer, pos)
    index_size, pos = read_varint(footer, pos)
    entries = {}
    for _, handle in iter_block_entries(read_block(table, index_offset, index_size)):
        block_offset, pos = read_varint(handle, 0)
        block_size, _ = read_varint(handle, pos)
        entries.update(iter_block_entries(read_block(table, block_offset, block_size)))
    return entries


def parse_bundle_entry(value: bytes) -> BundleEntry:
    """BundleEntryProto: dtype = 1, shape = 2, shard_id = 3, offset = 4, size = 5, crc32c = 6."""
    fields = parse_protobuf(value)
    shape_proto = parse_protobuf(fields.get(2, [b""])[0])  # TensorShapeProto: repeated Dim dim = 2
    shape = tuple(parse_protobuf(dim).get(1, [0])[0] for dim in shape_proto.get(2, []))

    def first(number: int) -> int:
        return fields.get(number, [0])[0]

    return BundleEntry(first(1), shape, first(3), first(4), first(5), first(6))


def parse_index(index_bytes: bytes) -> dict[str, BundleEntry]:
    """Parse the bytes of a .index file into {variable name: BundleEntry}."""
    table = read_table(index_bytes)
    if b"" not in table:
        raise CorruptCheckpoint("no bundle header")
    header = parse_protobuf(table.pop(b""))  # BundleHeaderProto: num_shards = 1, endianness = 2
    if header.get(1, [1])[0] != 1 or header.get(2, [0])[0] != 0:
        raise CorruptCheckpoint("expected one little-endian shard")
    return {name.decode("utf-8", "replace"): parse_bundle_entry(value) for name, value in table.items()}


# ---------------------------------------------------------------- files


def read_index(prefix: str) -> dict[str, BundleEntry]:
    """{variable name: BundleEntry} of the checkpoint at `prefix` (e.g. models/124M/model.ckpt)."""
    path = prefix + INDEX_SUFFIX
    try:
        with open(path, "rb") as f:
            return parse_index(f.read())
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    except CorruptCheckpoint as e:
        raise CheckpointError(f"corrupt checkpoint index {path}: {e}") from None


def map_data(prefix: str) -> np.ndarray:
    """The data file as a read-only uint8 array over a memory map: pages are read only when touched."""
    path = prefix + DATA_SUFFIX
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise CheckpointError(f"{path} is empty")
            return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None


def tensor_view(data: np.ndarray, entry: BundleEntry, name: str, prefix: str) -> np.ndarray:
    """A read-only view of one tensor's bytes in the mapped data file, with its dtype and shape."""
    if entry.dtype not in NUMPY_DTYPES or entry.shard != 0:
        raise CheckpointError(f"{prefix + INDEX_SUFFIX}: {name} has dtype {entry.dtype} in shard {entry.shard}, "
                              "which this reader does not handle")
    dtype = np.dtype(NUMPY_DTYPES[entry.dtype])
    if entry.size != dtype.itemsize * math.prod(entry.shape) or entry.offset + entry.size > data.size:
        data_path, index_path = prefix + DATA_SUFFIX, prefix + INDEX_SUFFIX
        raise CheckpointError(f"{data_path} is truncated or does not match {index_path} at {name}")
    return data[entry.offset : entry.offset + entry.size].view(dtype).reshape(entry.shape)


def first_corrupt_tensor(data: np.ndarray, entries: dict[str, BundleEntry]) -> str | None:
    """The name of the first tensor (in file order) whose bytes do not match the CRC32C in its index
    entry, or None when all match. A tensor running past the end of the data file counts as corrupt."""
    for name, entry in sorted(entries.items(), key=lambda item: item[1].offset):
        end = entry.offset + entry.size
        if end > data.size or mask_crc(crc32c(data[entry.offset : end])) != entry.crc32c:
            return name
    return None

