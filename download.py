"""Download OpenAI's GPT-2 release: the 7 files of a model size into `models/<size>/`, resumable and verified."""
import errno
import os
import re
import sys
from typing import TYPE_CHECKING

from errors import GPT2Error

# The download needs urllib, http.client, hashlib and tqdm; they are imported inside the functions
# that use them, because most runs find the files on disk and importing them would slow every
# start-up (README, "Speed").

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

if TYPE_CHECKING:
    import http.client

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


def _open_transfer(url: str, part: str) -> tuple["http.client.HTTPResponse", int, str | None]:
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


def _urlopen(url: str, offset: int = 0, method: str = "GET") -> "http.client.HTTPResponse | None":
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


def _expected_size(response: "http.client.HTTPResponse", offset: int, url: str) -> int:
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


def _fetch_into_part(response: "http.client.HTTPResponse", part: str, offset: int, size: int, url: str) -> None:
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


def _read_chunk(response: "http.client.HTTPResponse", url: str, received: int, size: int) -> bytes:
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
