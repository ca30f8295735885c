"""Download OpenAI's GPT-2 release and load it without TensorFlow.

Two jobs live here:
- downloading the 7 files of a model size into `models/<size>/`, resumable and verified;
- reading the TensorFlow checkpoint (a "tensor bundle": an SSTable index plus one raw data file)
  straight into NumPy views of a read-only memory map, so loading copies nothing.
"""
import json
import math
import mmap
import os

import numpy as np

MODEL_SIZES = ("124M", "355M", "774M", "1558M")
MODEL_FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
BASE_URL_ENV = "GPT2_BASE_URL"  # overrides DEFAULT_BASE_URL (tests point it at a local server)


class GPT2Error(Exception):
    """A problem the user can fix. The CLI prints its message as one line and exits with status 1."""


# ---------------------------------------------------------------- download

# (download code goes here)


# ---------------------------------------------------------------- checkpoint reading

# A checkpoint "model.ckpt" is a TensorFlow tensor bundle:
# - model.ckpt.index: an SSTable (LevelDB's table format) mapping each variable name to a
#   BundleEntryProto (dtype, shape, offset, size) and the empty key "" to a BundleHeaderProto;
# - model.ckpt.data-00000-of-00001: the tensors' raw little-endian bytes, one after another.
# We parse the index with a few lines of protobuf and SSTable decoding, then hand out NumPy views
# of a read-only memory map of the data file: no copy, no TensorFlow.

CHECKPOINT_PREFIX = "model.ckpt"
DATA_FILE = CHECKPOINT_PREFIX + ".data-00000-of-00001"
INDEX_FILE = CHECKPOINT_PREFIX + ".index"
TABLE_MAGIC = 0xDB4775248B80FB57  # last 8 bytes of every SSTable file
FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the magic
BLOCK_TRAILER_SIZE = 5  # 1 byte compression type + 4 bytes masked crc32c
DT_FLOAT = 1  # tensorflow.DataType enum value of float32


def _crc32c_table():
    poly = 0x82F63B78  # CRC-32C (Castagnoli), reflected
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data):
    """LevelDB stores CRCs 'masked' so that a CRC of data containing CRCs stays well distributed."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


class CorruptCheckpoint(ValueError):
    """Raised while parsing; load_checkpoint turns it into a GPT2Error that names the file."""


def read_varint(buf, pos):
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


def parse_protobuf(buf):
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


def read_block(index, offset, size):
    """Return the contents of the SSTable block at [offset, offset + size), checking its CRC."""
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(index):
        raise CorruptCheckpoint("a block handle points past the end of the file")
    contents, compression = index[offset:end], index[end]
    stored_crc = int.from_bytes(index[end + 1 : end + 5], "little")
    if masked_crc32c(index[offset : end + 1]) != stored_crc:
        raise CorruptCheckpoint(f"checksum mismatch in the block at byte {offset}")
    if compression != 0:
        raise CorruptCheckpoint(f"compressed blocks (type {compression}) are not supported")
    return contents


def iter_block_entries(block):
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


def read_table(index):
    """Decode a whole SSTable (bytes) into {key: value}: footer -> index block -> data blocks."""
    if len(index) < FOOTER_SIZE or int.from_bytes(index[-8:], "little") != TABLE_MAGIC:
        raise CorruptCheckpoint("not an SSTable (bad length or magic number)")
    footer = index[-FOOTER_SIZE:]
    _, pos = read_varint(footer, 0)  # metaindex handle: offset, size (unused)
    _, pos = read_varint(footer, pos)
    index_offset, pos = read_varint(footer, pos)
    index_size, pos = read_varint(footer, pos)
    table = {}
    for _, handle in iter_block_entries(read_block(index, index_offset, index_size)):
        block_offset, pos = read_varint(handle, 0)
        block_size, _ = read_varint(handle, pos)
        table.update(iter_block_entries(read_block(index, block_offset, block_size)))
    return table


def parse_bundle_entry(value):
    """BundleEntryProto -> (dtype, shape, shard_id, offset, size)."""
    fields = parse_protobuf(value)
    shape_proto = parse_protobuf(fields.get(2, [b""])[0])  # TensorShapeProto: repeated Dim dim = 2
    shape = tuple(parse_protobuf(dim).get(1, [0])[0] for dim in shape_proto.get(2, []))
    first = lambda number: fields.get(number, [0])[0]
    return first(1), shape, first(3), first(4), first(5)


def read_checkpoint_index(index_bytes):
    """Parse model.ckpt.index bytes into {variable name: (dtype, shape, shard_id, offset, size)}."""
    table = read_table(index_bytes)
    if b"" not in table:
        raise CorruptCheckpoint("no bundle header")
    header = parse_protobuf(table.pop(b""))  # BundleHeaderProto: num_shards = 1, endianness = 2
    if header.get(1, [1])[0] != 1 or header.get(2, [0])[0] != 0:
        raise CorruptCheckpoint("expected one little-endian shard")
    return {name.decode("utf-8", "replace"): parse_bundle_entry(value) for name, value in table.items()}


def checkpoint_shapes(hparams):
    """The variables of openai/gpt-2's model.py and their shapes, from hparams.json."""
    n_vocab, n_ctx, n_embd = hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"]
    shapes = {"model/wte": (n_vocab, n_embd), "model/wpe": (n_ctx, n_embd)}
    for i in range(hparams["n_layer"]):
        prefix = f"model/h{i}/"
        for name, n_in, n_out in [
            ("attn/c_attn", n_embd, 3 * n_embd),
            ("attn/c_proj", n_embd, n_embd),
            ("mlp/c_fc", n_embd, 4 * n_embd),
            ("mlp/c_proj", 4 * n_embd, n_embd),
        ]:
            shapes[prefix + name + "/w"] = (1, n_in, n_out)  # conv1d weights keep a leading 1
            shapes[prefix + name + "/b"] = (n_out,)
        for name in ("ln_1", "ln_2"):
            shapes[prefix + name + "/g"] = (n_embd,)
            shapes[prefix + name + "/b"] = (n_embd,)
    shapes["model/ln_f/g"] = shapes["model/ln_f/b"] = (n_embd,)
    return shapes


def map_checkpoint_tensors(model_dir, hparams):
    """{variable name: read-only float32 view into the memory-mapped data file}, validated."""
    index_path, data_path = os.path.join(model_dir, INDEX_FILE), os.path.join(model_dir, DATA_FILE)
    hint = "delete it and run again to download it anew"
    try:
        with open(index_path, "rb") as f:
            entries = read_checkpoint_index(f.read())
    except OSError as e:
        raise GPT2Error(f"cannot read {index_path}: {e.strerror}; {hint}") from None
    except CorruptCheckpoint as e:
        raise GPT2Error(f"corrupt checkpoint index {index_path}: {e}; {hint}") from None
    data = map_read_only(data_path, hint)
    tensors = {}
    for name, shape in checkpoint_shapes(hparams).items():
        if name not in entries:
            raise GPT2Error(f"{index_path} has no variable {name}: it does not match hparams.json; {hint}")
        dtype, stored_shape, shard, offset, size = entries[name]
        if dtype != DT_FLOAT or stored_shape != shape or shard != 0:
            raise GPT2Error(
                f"{index_path}: {name} is dtype {dtype} shape {list(stored_shape)}, but hparams.json "
                f"needs float32 {list(shape)}; {hint}"
            )
        if size != 4 * math.prod(shape) or offset + size > data.size:
            raise GPT2Error(f"{data_path} is truncated or does not match {index_path} at {name}; {hint}")
        tensors[name] = data[offset : offset + size].view("<f4").reshape(shape)
    return tensors


def map_read_only(path, hint):
    """Memory-map a file read-only as a uint8 array (pages are read from disk only when touched)."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise GPT2Error(f"{path} is empty; {hint}")
            return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
    except OSError as e:
        raise GPT2Error(f"cannot read {path}: {e.strerror}; {hint}") from None


def load_hparams(model_dir):
    path = os.path.join(model_dir, "hparams.json")
    hint = "delete it and run again to download it anew"
    try:
        with open(path, encoding="utf-8") as f:
            hparams = json.load(f)
    except OSError as e:
        raise GPT2Error(f"cannot read {path}: {e.strerror}; {hint}") from None
    except ValueError as e:
        raise GPT2Error(f"{path} is not valid JSON ({e}); {hint}") from None
    keys = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
    if not isinstance(hparams, dict) or not all(
        isinstance(hparams.get(k), int) and not isinstance(hparams.get(k), bool) and hparams[k] > 0
        for k in keys
    ):
        raise GPT2Error(f"{path} must give positive integers for {', '.join(keys)}; {hint}")
    if hparams["n_embd"] % hparams["n_head"]:
        raise GPT2Error(f"{path}: n_embd must be a multiple of n_head; {hint}")
    return hparams


def params_from_tensors(tensors, n_layer):
    """Nest the flat checkpoint names into picoGPT's params dict; conv1d weights lose their leading 1."""
    params = {"blocks": [{} for _ in range(n_layer)]}
    for name, array in tensors.items():
        parts = name.split("/")[1:]  # drop the "model/" scope
        if parts[-1] == "w":
            array = array[0]  # [1, n_in, n_out] -> [n_in, n_out]
        node = params
        if parts[0].startswith("h"):
            node, parts = params["blocks"][int(parts[0][1:])], parts[1:]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = array
    return params


def load_params(model_dir, hparams):
    return params_from_tensors(map_checkpoint_tensors(model_dir, hparams), hparams["n_layer"])


def load_encoder_hparams_and_params(model_size, models_dir="models", base_url=None):
    """picoGPT's entry point: download if needed, then return (encoder, hparams, params)."""
    from encoder import get_encoder

    model_dir = download_model_files(model_size, models_dir, base_url)
    encoder = get_encoder(model_size, models_dir)
    hparams = load_hparams(model_dir)
    return encoder, hparams, load_params(model_dir, hparams)
