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
    try:
        with open(os.path.join(model_dir, MARKER_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):  # none yet, or unreadable: check again
        return None


def remember(model_dir: str, versions: dict[str, list[int]]) -> None:
    """Write the marker atomically; a model directory we cannot write to is simply checked every time."""
    path = os.path.join(model_dir, MARKER_FILE)
    temporary = f"{path}.{os.getpid()}.tmp"
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
    aside = move_aside(data_path)
    raise GPT2Error(f"{data_path} is damaged: tensor {corrupt} does not match the CRC32C checksum in "
                    f"{os.path.basename(index_path)}; moved it to {aside}, run again to download it anew")


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
