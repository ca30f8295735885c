"""Every format the loader reads, damaged by hypothesis, must load or fail with a one-line GPT2Error.

Each example is a model folder of links to a committed fixture, with one file replaced by a damaged
copy: a JSON value swapped for a hostile one (a negative, huge or non-integer number, a bool, a
string, null, a list, NaN, nesting deeper than Python's recursion limit), a key or line dropped,
the bytes cut short, flipped or prefixed, a safetensors header length that lies. The loader
(utils.load_model, and load_encoder_hparams_and_params for OpenAI's layout) must either succeed or
raise a one-line GPT2Error: any other exception is a bug. No file in the folder may change, and the
fixtures themselves must not either; the tool may only add its own files (.verified.json) and, on the
download path, rename a file that fails its checks to <name>.damaged.

The default run is bounded (a few examples per format, about 5 s); `pytest -m slow` runs many more.
"""
import functools
import itertools
import json
import os
import re
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference
import utils
from errors import GPT2Error

TOOL_FILES = {".verified.json"}  # what the loader itself may write into a model folder
DEEP = "\u0000deep\u0000"  # a placeholder string, written out as nesting deeper than the recursion limit
SHARDED = "hf-a-sharded"  # hf-a split into two shards and an index, built once per module
FORMATS = [  # (fixture, file, kind of damage)
    ("tiny-a", "hparams.json", "json"),
    ("tiny-a", "encoder.json", "json"),
    ("tiny-b", "vocab.bpe", "lines"),
    ("hf-a", "config.json", "json"),
    ("hf-a", "vocab.json", "json"),
    ("hf-a", "merges.txt", "lines"),
    ("hf-a", "tokenizer_config.json", "json"),
    ("hf-b", "tokenizer.json", "json"),
    ("hf-c", "model.safetensors", "safetensors"),
    (SHARDED, "model.safetensors.index.json", "json"),
    (SHARDED, "model-00001-of-00002.safetensors", "safetensors"),
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """{fixture name: folder}: the committed fixtures, and hf-a sharded."""
    numpy_io = pytest.importorskip("safetensors.numpy", reason="the safetensors package writes the shards")
    folders = {name: reference.fixture_dir(name) for name in ("tiny-a", "tiny-b", "hf-a", "hf-b", "hf-c")}
    sharded = tmp_path_factory.mktemp(SHARDED)
    for name in os.listdir(folders["hf-a"]):
        if not name.startswith(".") and name != "model.safetensors":
            shutil.copy(os.path.join(folders["hf-a"], name), sharded / name)
    tensors = numpy_io.load_file(os.path.join(folders["hf-a"], "model.safetensors"))
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        numpy_io.save_file({name: tensors[name] for name in part}, str(sharded / file))
    weight_map = {name: file for file, part in halves.items() for name in part}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    folders[SHARDED] = str(sharded)
    before = {name: snapshot(folder) for name, folder in folders.items()}
    yield folders
    assert {name: snapshot(folder) for name, folder in folders.items()} == before  # the sources are untouched


def snapshot(folder):
    """{file name: (size, mtime)} of a folder, without the tool's own files."""
    return {name: (os.stat(os.path.join(folder, name)).st_size, os.stat(os.path.join(folder, name)).st_mtime_ns)
            for name in os.listdir(folder) if name not in TOOL_FILES}


def moved_back(files):
    """A snapshot with each file that the tool moved aside (<name>.damaged, .damaged-2, ...) under its name."""
    return {re.sub(r"\.damaged(-\d+)?$", "", name): facts for name, facts in files.items()}


@functools.lru_cache(maxsize=None)
def original(folder, file):
    with open(os.path.join(folder, file), "rb") as f:
        return f.read()


@functools.lru_cache(maxsize=None)
def parsed(folder, file):
    return json.loads(original(folder, file))


# ---------------------------------------------------------------- strategies of damage

hostile_values = st.one_of(
    st.sampled_from([-1, 0, 1, 10**7, 2**63, -(2**63), 10**400, 1.5, float("nan"), float("inf"), True, False, None,
                     "", "8", "F32", [], {}, [1, 2], {"a": 1}, DEEP]),
    st.integers(), st.floats(), st.text(max_size=8),
    st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=3),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                 max_leaves=6),
)


@st.composite
def json_path(draw, value):
    """A path of keys / indexes from the root of `value` into it, mostly down to a leaf (a dtype, an id, a
    size), sometimes stopping at a container on the way (1 in 8 at each level)."""
    path = []
    while isinstance(value, (dict, list)) and value and draw(st.integers(0, 7)):
        i = draw(st.integers(0, len(value) - 1))
        key = next(itertools.islice(value, i, None)) if isinstance(value, dict) else i
        path.append(key)
        value = value[key]
    return path


def replaced(value, path, new):
    """A copy of `value` with the item at `path` replaced by `new`; only the containers along the path are
    copied, so a 50,000-entry vocabulary costs one shallow copy."""
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


def dropped(value, path):
    """A copy of `value` without the item at `path` (the root itself cannot be dropped)."""
    copy = dict(value) if isinstance(value, dict) else list(value)
    if len(path) == 1:
        del copy[path[0]]
    else:
        copy[path[0]] = dropped(value[path[0]], path[1:])
    return copy


def dumped(value):
    text = json.dumps(value).encode()
    return text.replace(json.dumps(DEEP).encode(), b"[" * 100_000 + b"]" * 100_000)


@st.composite
def byte_damage(draw, data):
    """The bytes cut short, a few flipped, or prefixed with deep nesting or invalid UTF-8."""
    kind = draw(st.sampled_from(["cut", "flip", "prefix"]))
    if kind == "cut":
        return data[: draw(st.integers(0, len(data)))]
    if kind == "flip":
        damaged = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            damaged[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(damaged)
    return draw(st.sampled_from([b"[" * 100_000, b"\xff\xfe", b"{", b"<html>"])) + data


@st.composite
def damaged_json(draw, folder, file):
    value = parsed(folder, file)
    kind = draw(st.sampled_from(["replace", "replace", "replace", "drop", "bytes"]))
    path = draw(json_path(value))
    if kind == "replace":
        return dumped(replaced(value, path, draw(hostile_values)))
    if kind == "drop" and path:
        return dumped(dropped(value, path))
    return draw(byte_damage(original(folder, file)))


@st.composite
def damaged_lines(draw, folder, file):
    lines = original(folder, file).split(b"\n")
    i = draw(st.integers(0, len(lines) - 1))
    kind = draw(st.sampled_from(["replace", "drop", "repeat", "bytes"]))
    if kind == "replace":
        lines[i] = draw(st.sampled_from([b"", b"a", b"a b c", b" ", b"\xff", b"a  b", b"#version: 0.2"]))
    elif kind == "drop":
        del lines[i]
    elif kind == "repeat":
        lines.insert(i, lines[i])
    else:
        return draw(byte_damage(original(folder, file)))
    return b"\n".join(lines)


@st.composite
def damaged_safetensors(draw, folder, file):
    data = original(folder, file)
    n = int.from_bytes(data[:8], "little")
    header, body = json.loads(data[8 : 8 + n]), data[8 + n :]
    kind = draw(st.sampled_from(["header", "header", "header", "drop", "length", "body", "bytes"]))
    if kind in ("header", "drop"):
        path = draw(json_path(header))
        if kind == "drop" and path:
            header = dropped(header, path)
        else:
            header = replaced(header, path, draw(hostile_values))
        text = dumped(header)
        return len(text).to_bytes(8, "little") + text + body
    if kind == "length":
        return draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little") + data[8:]
    if kind == "body":  # the data area longer or shorter than the tensors need
        return data[:8 + n] + body[: draw(st.integers(0, len(body)))] + draw(st.binary(max_size=8))
    return draw(byte_damage(data))


DAMAGE = {"json": damaged_json, "lines": damaged_lines, "safetensors": damaged_safetensors}


# ---------------------------------------------------------------- the property


def load_damaged(source, file, damaged):
    """Load a folder of links to `source` with `file` replaced by `damaged`: success or a one-line GPT2Error."""
    root = tempfile.mkdtemp(prefix="hostile-")
    try:
        folder = os.path.join(root, "124M")  # OpenAI's layout is also loaded as <models_dir>/<size>
        os.mkdir(folder)
        for name in os.listdir(source):
            if not name.startswith(".") and name != file:
                os.symlink(os.path.join(source, name), os.path.join(folder, name))
        with open(os.path.join(folder, file), "wb") as f:
            f.write(damaged)
        before = snapshot(folder)
        loads = [lambda: utils.load_model(folder)]
        if os.path.isfile(os.path.join(folder, "hparams.json")):
            loads.append(lambda: utils.load_encoder_hparams_and_params("124M", root, "http://127.0.0.1:9"))
        for load in loads:
            try:
                load()
            except GPT2Error as e:
                assert str(e) and "\n" not in str(e), repr(str(e))
        assert moved_back(snapshot(folder)) == before  # the download path renames damaged files, nothing more
    finally:
        shutil.rmtree(root)


def check_format(sources, source, file, kind, data):
    folder = sources[source]
    load_damaged(folder, file, data.draw(DAMAGE[kind](folder, file), label=file))


SETTINGS = dict(deadline=None, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


@pytest.mark.parametrize("source, file, kind", FORMATS, ids=[f"{s}/{f}" for s, f, _ in FORMATS])
@settings(max_examples=2, **SETTINGS)
@given(data=st.data())
def test_damaged_model_files_load_or_fail_with_one_line(sources, source, file, kind, data):
    check_format(sources, source, file, kind, data)


@pytest.mark.slow
@pytest.mark.parametrize("source, file, kind", FORMATS, ids=[f"{s}/{f}" for s, f, _ in FORMATS])
@settings(max_examples=150, **SETTINGS)
@given(data=st.data())
def test_damaged_model_files_load_or_fail_with_one_line_many_examples(sources, source, file, kind, data):
    check_format(sources, source, file, kind, data)
