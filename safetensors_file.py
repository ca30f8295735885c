"""Hugging Face's safetensors format, read by memory map: a reader that knows tensors, not models.

A .safetensors file is an 8-byte little-endian header length N, N bytes of JSON describing each
tensor ({"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__":
{...}}), then the tensors' bytes, offsets counted from the end of the header. Everything is checked
before any tensor is handed out: a damaged file gives a one-line error naming it, never a crash or
a huge allocation.

The `safetensors` package's NumPy loader copies every tensor into memory; this reader hands out
read-only views of a memory map instead, so a float32 model loads without reading its weights.
"""
import io
import json
import math
import mmap
import os
import stat

import numpy as np

from errors import GPT2Error

DTYPES = {  # safetensors dtype -> NumPy dtype; BF16 has none and is kept as its raw 16 bits
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}
MAX_HEADER = 100 << 20  # the format's own limit on the JSON header (100 MB)


class SafetensorsError(GPT2Error):
    """A damaged or unreadable .safetensors file; the message names it."""


def read_tensors(path: str) -> dict[str, tuple[str, np.ndarray]]:
    """{name: (safetensors dtype, read-only array)}: views of a memory map, BF16 as uint16 bits."""
    try:
        with open_regular_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise SafetensorsError(f"{path} is truncated: {size} bytes, less than its 8-byte header length")
            data = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
    except OSError as e:
        raise SafetensorsError(f"cannot read {path}: {e.strerror}") from None
    entries, start = parse_header(data, path)
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        view = data[start + begin : start + end].view(DTYPES[dtype])
        tensors[name] = dtype, view.reshape(shape)
    return tensors


def open_regular_file(path: str) -> "io.BufferedReader":
    """Open `path` for reading, refusing anything but a regular file: opening a FIFO blocks until a
    writer comes, so it is opened without blocking and checked before any read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise SafetensorsError(f"{path} is {kind}, not a regular file: put the model's file there")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def parse_header(data: np.ndarray, path: str) -> tuple[dict[str, tuple], int]:
    """({name: (dtype, shape, begin, end)}, where the data starts), every entry checked against the file."""
    n_header = int.from_bytes(data[:8].tobytes(), "little")
    if n_header > min(MAX_HEADER, data.size - 8):
        raise SafetensorsError(f"{path} is truncated or damaged: its header claims {n_header} bytes")
    try:
        header = json.loads(data[8 : 8 + n_header].tobytes())
    except ValueError:
        raise SafetensorsError(f"{path} is damaged: its header is not valid JSON") from None
    except RecursionError:
        raise SafetensorsError(f"{path} is damaged: its header's JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path} is damaged: its header is not a JSON object")
    header.pop("__metadata__", None)
    n_data = data.size - 8 - n_header
    entries = {name: check_entry(name, entry, n_data, path) for name, entry in header.items()}
    check_layout(entries, n_data, path)
    return entries, 8 + n_header


def check_entry(name: str, entry: object, n_data: int, path: str) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, or a SafetensorsError naming the tensor."""
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{path} is damaged: the entry of {name} is not a JSON object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise SafetensorsError(f"{path}: {name} has dtype {dtype!r}, which this reader does not know")
    # a dimension larger than the file can only come with another of 0, and NumPy cannot make that shape
    if not (isinstance(shape, list) and len(shape) <= 32 and all(is_count(n) and n <= n_data for n in shape)):
        raise SafetensorsError(f"{path} is damaged: {name} has shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_count(n) for n in offsets)):
        raise SafetensorsError(f"{path} is damaged: {name} has data_offsets {offsets!r}")
    begin, end = offsets
    if end - begin != math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize:
        raise SafetensorsError(f"{path} is damaged: {name} has shape {shape} of {dtype} but {end - begin} bytes")
    return dtype, tuple(shape), begin, end


def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_layout(entries: dict[str, tuple], n_data: int, path: str) -> None:
    """The tensors must fill the data area exactly, one after another: no overlap, no gap, no overrun."""
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin != position:
            raise SafetensorsError(f"{path} is damaged: {name} starts at byte {begin} of the data, "
                                   f"expected {position} (tensors overlap or leave a gap)")
        position = end
    if position != n_data:
        raise SafetensorsError(f"{path} is truncated or damaged: its tensors need {position} bytes of data, "
                               f"the file has {n_data}")


def to_float32(dtype: str, array: np.ndarray) -> np.ndarray:
    """A float32 array of the tensor: the view itself for F32, a converted copy for F16, BF16 and F64."""
    if dtype == "F32":
        return array
    if dtype == "BF16":  # bfloat16 is the upper half of a float32: shift its bits into place
        return (array.astype(np.uint32) << 16).view(np.float32)
    if dtype in ("F16", "F64"):
        return array.astype(np.float32)
    raise ValueError(f"{dtype} is not a floating-point dtype")
