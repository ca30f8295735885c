"""A model's bytes checked against the checksums its own checkpoint holds, once per version of its files.

TensorFlow's index keeps a CRC32C of every tensor. The first load of a model (right after its
download, or after its files changed) checks them all; a pass is remembered in
<model_dir>/.verified.json, keyed by the size and modification time of the data and index files,
so later start-ups skip the check. A mismatch moves the data file aside (it is renamed, never
deleted) and says so, and the next run downloads it anew.
"""
import json
import os
import sys

import numpy as np

import tf_checkpoint
from errors import GPT2Error

MARKER_FILE = ".verified.json"


def file_versions(paths: list[str]) -> dict[str, list[int]]:
    """{file name: [size, mtime in ns]}: what a remembered pass is valid for."""
    versions = {}
    for path in paths:
        stat = os.stat(path)
        versions[os.path.basename(path)] = [stat.st_size, stat.st_mtime_ns]
    return versions


def remembered(model_dir: str) -> dict | None:
    path = os.path.join(model_dir, MARKER_FILE)
    if not os.path.isfile(path):  # none yet, or a FIFO that open() would wait on forever: check again
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError, RecursionError):  # unreadable: check again
        return None


def remember(model_dir: str, versions: dict[str, list[int]]) -> None:
    """Write the marker atomically; a model directory we cannot write to is simply checked every time."""
    path = os.path.join(model_dir, MARKER_FILE)
    temporary = f"{path}.{os.getpid()}.tmp"
    if os.path.lexists(path) and not os.path.isfile(path) or os.path.lexists(temporary):
        return  # not ours to replace (a FIFO, a folder): the model is simply checked every time
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(versions, f)
        os.replace(temporary, path)
    except OSError:
        pass


def verify_checkpoint(prefix: str, entries: dict, data: np.ndarray, force: bool = False) -> None:
    """Check every tensor of the checkpoint at `prefix` against its CRC32C, unless a pass of these
    very files is remembered (force: check anyway). Raises GPT2Error naming the file and tensor."""
    model_dir = os.path.dirname(prefix) or "."
    data_path, index_path = prefix + tf_checkpoint.DATA_SUFFIX, prefix + tf_checkpoint.INDEX_SUFFIX
    versions = file_versions([data_path, index_path])
    if not force and remembered(model_dir) == versions:
        return
    if not tf_checkpoint.CRC32C_IN_C:  # it works, but a user waiting a minute should know why
        print(f"checking {data_path} against its CRC32C checksums with google-crc32c's pure-Python fallback "
              "(about 1 minute per 500 MB); a build of google-crc32c with its C extension makes this instant",
              file=sys.stderr, flush=True)
    corrupt = tf_checkpoint.first_corrupt_tensor(data, entries)
    if corrupt is None:
        remember(model_dir, versions)
        return
    damage = (f"{data_path} is damaged: tensor {corrupt} does not match the CRC32C checksum in "
              f"{os.path.basename(index_path)}")
    if version_of(data_path) != versions[os.path.basename(data_path)]:
        # runs started together check together: another one that found the same damage got there first
        raise GPT2Error(f"{damage}; another run has moved it aside already, run again to download it anew")
    raise GPT2Error(f"{damage}; moved it to {move_aside(data_path)}, run again to download it anew")


def version_of(path: str) -> list[int] | None:
    """[size, mtime in ns] of the file now at `path`, or None if there is none."""
    try:
        return file_versions([path])[os.path.basename(path)]
    except FileNotFoundError:
        return None


def move_aside(path: str) -> str:
    """Rename a damaged file to <path>.damaged (or .damaged-2, ...) so the next run fetches it anew."""
    for n in range(1, 1000):
        aside = path + (".damaged" if n == 1 else f".damaged-{n}")
        if not os.path.exists(aside):
            try:
                os.rename(path, aside)
            except OSError as e:
                raise GPT2Error(f"{path} is damaged and cannot be moved aside ({e.strerror}): delete it "
                                "and run again to download it anew") from None
            return aside
    raise GPT2Error(f"{path} is damaged: delete it and the {path}.damaged* files, and run again")
