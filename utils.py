"""Download OpenAI's GPT-2 release and load it without TensorFlow.

Two jobs live here:
- downloading the 7 files of a model size into `models/<size>/`, resumable and verified;
- reading the TensorFlow checkpoint (a "tensor bundle": an SSTable index plus one raw data file)
  straight into NumPy views of a read-only memory map, so loading copies nothing.
"""
import errno
import json
import math
import mmap
import os
import re
import sys

import numpy as np

# The download needs urllib, http.client, hashlib and tqdm; they are imported inside the functions
# that use them, because most runs find the files on disk: importing them every time would add
# 30 ms to start-up and 10 MB to memory.

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

# OpenAI publishes each model size as 7 files under <base_url>/<size>/. Each file is fetched into
# "<file>.part" and renamed to its final name only once it is verified: its size matches what the
# server announced and, when the server sends a Content-MD5 header, so does its MD5. A file under
# its final name is therefore complete by construction, which we can check without any network:
# once all 7 files are there, the tool runs offline.
#
# A ".part" left by an interrupted run is resumed with an HTTP Range request. The Content-MD5 of a
# 206 (partial) response describes only the bytes it carries, so before resuming we ask for the
# whole file's Content-MD5 with a HEAD request and check it against the whole .part at the end.

CHUNK_SIZE = 1 << 20  # read at most 1 MiB at a time
TIMEOUT = 60  # seconds to wait for the connection, and then for each read, before giving up
NETWORK_HINT = f"check your network or set {BASE_URL_ENV} / --base_url"


def download_model_files(model_size: str, models_dir: str, base_url: str | None = None) -> str:
    """Make sure the 7 files of `model_size` are complete in <models_dir>/<model_size>/; return it."""
    check_model_size(model_size)  # first: a size like "../x" must never become a path
    model_dir = make_model_dir(models_dir, model_size)
    missing = [name for name in MODEL_FILES if not os.path.isfile(os.path.join(model_dir, name))]
    if missing:
        check_writable(model_dir)
        base_url = resolve_base_url(base_url)
        for name in missing:
            download_file(model_file_url(base_url, model_size, name), os.path.join(model_dir, name))
    return model_dir


def check_model_size(model_size: str) -> None:
    if model_size not in MODEL_SIZES:
        raise GPT2Error(f"unknown model size {model_size!r}; choose one of {', '.join(MODEL_SIZES)}")


def make_model_dir(models_dir: str, model_size: str) -> str:
    model_dir = os.path.join(models_dir, model_size)
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as e:
        raise GPT2Error(
            f"cannot create directory {model_dir}: {e.strerror}; choose another --models_dir"
        ) from None
    return model_dir


def check_writable(model_dir: str) -> None:
    """Fail early with a clear message rather than halfway through the first download."""
    if not os.access(model_dir, os.W_OK | os.X_OK):
        raise GPT2Error(
            f"cannot write to directory {model_dir}; fix its permissions or choose another --models_dir"
        )


def resolve_base_url(base_url: str | None = None) -> str:
    """The argument wins, then the environment variable GPT2_BASE_URL, then OpenAI's storage."""
    return (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def model_file_url(base_url: str, model_size: str, filename: str) -> str:
    return f"{base_url.rstrip('/')}/{model_size}/{filename}"


def download_file(url: str, path: str) -> None:
    """Download `url` to `path` through `path`.part (resuming it if present), verify it, rename it."""
    part = path + ".part"
    response, offset, md5 = _open_transfer(url, part)
    with response:
        size = _expected_size(response, offset, url)
        _fetch_into_part(response, part, offset, size, url)
    _check_md5(part, md5, url)
    try:
        os.replace(part, path)  # atomic: the final name never names a partial file
    except OSError as e:
        raise GPT2Error(f"cannot rename {part} to {path}: {e.strerror}") from None


def _open_transfer(url: str, part: str):
    """Send the GET that fills `part`: return (response, byte offset to write at, whole-file MD5)."""
    response = None
    offset = _size_on_disk(part)
    if offset:
        md5 = _head_md5(url)  # a 206's own Content-MD5 would cover only the missing bytes
        response = _urlopen(url, offset)  # None means 416: the part is too long to be continued
        if response is not None and response.status == 206:
            return response, offset, md5
        # Either 416 (the part is as long as the file, or longer) or 200 (the server ignores Range
        # and sends the whole file): in both cases we start again from byte 0.
    if response is None:
        response = _urlopen(url)
    return response, 0, response.headers.get("Content-MD5")  # a 200's Content-MD5 is the file's


def _head_md5(url: str) -> str | None:
    """The whole file's Content-MD5 (base64), as the server reports it for a HEAD request."""
    with _urlopen(url, method="HEAD") as response:
        return response.headers.get("Content-MD5")


def _urlopen(url: str, offset: int = 0, method: str = "GET"):
    """Open `url` from byte `offset`. Failures become GPT2Error, except 416 which returns None."""
    import http.client
    import urllib.error
    import urllib.request

    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        request = urllib.request.Request(url, headers=headers, method=method)
        return urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:  # the server answered, with an error status
        e.close()
        if e.code == 416 and offset:  # Range Not Satisfiable: the caller starts over
            return None
        raise GPT2Error(
            f"cannot download {url}: HTTP {e.code} {e.reason}; "
            f"check the model size, or set {BASE_URL_ENV} / --base_url"
        ) from None
    except (OSError, http.client.HTTPException) as e:  # no usable answer: refused, DNS, reset, timeout
        raise GPT2Error(f"cannot download {url}: {_describe(e)}; {NETWORK_HINT}") from None
    except ValueError as e:  # urllib cannot parse it, e.g. a base URL without "https://"
        raise GPT2Error(
            f"invalid URL {url} ({e}); set {BASE_URL_ENV} / --base_url to an http(s) URL"
        ) from None


def _describe(error: Exception) -> str:
    """A short reason for a network error: 'Connection refused', 'timed out', ..."""
    reason = getattr(error, "reason", error)  # URLError wraps the underlying socket error
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _expected_size(response, offset: int, url: str) -> int:
    """The whole file's size: Content-Length, or on a 206 the total in Content-Range ("bytes 9-99/100")."""
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", content_range.strip())
        if match and int(match[1]) == offset:
            return int(match[2])
        raise GPT2Error(
            f"cannot resume {url}: the server answered a request from byte {offset} with "
            f"Content-Range {content_range!r}; delete the .part file to start over"
        )
    length = response.headers.get("Content-Length", "")
    if not length.isdigit():  # without it, a cut connection would look like a complete file
        raise GPT2Error(
            f"cannot download {url}: the server sent no Content-Length; "
            f"set {BASE_URL_ENV} / --base_url to another server"
        )
    return int(length)


def _fetch_into_part(response, part: str, offset: int, size: int, url: str) -> None:
    """Write the response body into `part` from `offset` (0 empties it first), with a progress bar."""
    from tqdm import tqdm

    received = offset
    try:
        with open(part, "ab" if offset else "wb") as f, tqdm(
            desc=os.path.basename(url), total=size, initial=offset,
            unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
        ) as bar:
            while chunk := _read_chunk(response, url, received, size):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    except OSError as e:  # reading errors are already GPT2Errors, so these come from the disk
        raise _disk_error(e, part) from None
    if received != size:  # the connection ended early; the bytes that did arrive stay for resuming
        raise GPT2Error(
            f"download of {url} ended after {received} of {size} bytes; run again to resume"
        )


def _read_chunk(response, url: str, received: int, size: int) -> bytes:
    """Up to CHUNK_SIZE bytes of the body, b"" at its end.

    read1 returns whatever has arrived (one system call) instead of waiting for a full chunk, so
    when the connection drops, every byte received before is already written to the .part file.
    """
    import http.client

    try:
        return response.read1(CHUNK_SIZE)
    except (OSError, http.client.HTTPException) as e:  # reset, timeout, broken chunked encoding
        raise GPT2Error(
            f"connection lost while downloading {url} ({_describe(e)}) "
            f"after {received} of {size} bytes; run again to resume"
        ) from None


def _disk_error(error: OSError, path: str) -> GPT2Error:
    if error.errno == errno.ENOSPC:
        return GPT2Error(
            f"no space left on device while writing {path}; free some disk space and run again to resume"
        )
    return GPT2Error(
        f"cannot write {path}: {error.strerror or error}; "
        "check its permissions or choose another --models_dir"
    )


def _check_md5(part: str, expected: str | None, url: str) -> None:
    """If the server sent a Content-MD5, compare it with the MD5 of the whole .part file on disk."""
    if expected is None:
        return
    actual = _file_md5(part)
    if actual != expected.strip():
        os.remove(part)  # resuming cannot repair a wrong byte somewhere, so start over next time
        raise GPT2Error(
            f"{url} failed its MD5 check (got {actual}, server says {expected}); "
            "removed the partial file, run again to download it anew"
        )


def _file_md5(path: str) -> str:
    """Base64 of the MD5 digest of a file, the encoding of HTTP's Content-MD5 header.

    Reading the file back (rather than hashing chunks as they arrive) checks what is really on
    disk, and covers a resumed file's old and new bytes alike.
    """
    import base64
    import hashlib

    with open(path, "rb") as f:
        return base64.b64encode(hashlib.file_digest(f, "md5").digest()).decode("ascii")


def _size_on_disk(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # no such file yet
        return 0


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
REDOWNLOAD = "delete it and run again to download it anew"  # what to do about a damaged model file


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
    hint = REDOWNLOAD
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
    hint = REDOWNLOAD
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


# ---------------------------------------------------------------- prompt files and outputs

JSONL_SUFFIXES = (".jsonl", ".ndjson")
RECORD_START = b'{"line": '  # every output record begins so: see gpt2.py's completion_record


def read_text(path):
    """The UTF-8 text of a file, or of standard input for "-"."""
    name = "standard input" if path == "-" else path
    try:
        if path == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        with open(path, "rb") as f:
            return f.read().decode("utf-8")
    except OSError as e:
        raise GPT2Error(f"cannot read {name}: {e.strerror}; check the path") from None
    except UnicodeDecodeError as e:
        raise GPT2Error(f"{name} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from None


def read_prompts(path):
    """[(line number, prompt)] from a file: one prompt per line, or in a .jsonl file one JSON object
    per line with a "prompt" string. Empty lines are skipped; every other line must be valid."""
    as_json = path.lower().endswith(JSONL_SUFFIXES)
    prompts = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line:
            continue
        prompts.append((number, parse_json_prompt(line, path, number) if as_json else line))
    if not prompts:
        raise GPT2Error(f"{path} has no prompts: write one prompt per line")
    return prompts


def parse_json_prompt(line, path, number):
    try:
        record = json.loads(line)
    except ValueError as e:
        raise GPT2Error(f"{path} line {number} is not valid JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise GPT2Error(f'{path} line {number} has no "prompt" string: write {{"prompt": "your text"}}')
    return record["prompt"]


def count_finished_records(path, prompts):
    """How many prompts an earlier run with the same prompts already wrote to `path` (0 if no file).

    Each complete line must be the record of the prompt at that place, or we stop rather than mix
    two runs' results. A last line without its newline is a record cut off by an interrupted run:
    it is removed so the next record starts on a line of its own.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise GPT2Error(f"cannot read --output {path}: {e.strerror}") from None
    complete, _, cut_off = data.rpartition(b"\n")
    lines = complete.split(b"\n") if complete or data.startswith(b"\n") else []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if i >= len(prompts) or not isinstance(record, dict) or record.get("prompt") != prompts[i][1]:
            raise GPT2Error(
                f"--output {path} line {i + 1} is not this run's record for prompt {i + 1}; "
                "use another --output (or the same arguments as the run that wrote it)"
            )
    if cut_off:
        if not cut_off.startswith(RECORD_START):
            raise GPT2Error(f"--output {path} ends with a line this tool did not write; use another --output")
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(cut_off))
    return len(lines)
