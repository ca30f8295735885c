"""Download OpenAI's GPT-2 release: the 7 files of a model size into `models/<size>/`, resumable and verified.

Each file is fetched into "<file>.part" and renamed to its final name only once it is verified:
its size matches what the server announced and, when the server sent a Content-MD5 header, so
does the MD5 of the whole file on disk. A file under its final name is therefore complete by
construction, which we can check without any network: once all 7 files are there, the tool runs
offline. (The tensors' own CRC32C checksums are checked when the model loads: see integrity.py.)

Resuming needs no HEAD request, which many servers refuse: the first response's whole-file facts
(size, Content-MD5, ETag / Last-Modified) are saved beside the .part in "<file>.part.json" before
any byte of the body is written. A later request asks for the rest with Range and If-Range, and
the saved MD5 checks the whole file at the end. A server that ignores Range, or a file that changed
meanwhile, answers with the whole file, and we start over from byte 0; so does a .part whose facts
were lost. A connection reset or a timeout in the middle of a file is retried within the same run,
from the bytes already on disk. A lock per model directory makes concurrent runs take turns.
"""
import base64
import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import sys
import time
from typing import TYPE_CHECKING, Callable, Iterator

from errors import GPT2Error

# requests, urllib3, tqdm and filelock are imported only when a file is missing (import_network_stack):
# most runs find the files on disk, and importing them costs every start-up (README, "Speed").
if TYPE_CHECKING:
    import requests
    import urllib3

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
CHUNK_SIZE = 1 << 20  # read at most 1 MiB at a time
TIMEOUT = (10, 60)  # seconds to connect, then to wait for each read, before a try counts as failed
RETRIES = 4  # further tries of a request, or of a body cut off midway, within one run
BACKOFF = 0.5  # seconds before the first retry, doubling after each
MAX_RETRY_AFTER = 5.0  # seconds: a server asking (Retry-After) to wait longer than this is not waited for
PROGRESS = 1 << 20  # a body cut off after this many new bytes renews the retries: a flaky line still gets there
LOCK_FILE = ".download.lock"
NETWORK_HINT = f"check your network or set {BASE_URL_ENV} / --base_url"


class ServerAsksToWait(Exception):
    """A 429 or 503 whose Retry-After is longer than MAX_RETRY_AFTER: raised from inside urllib3's retry."""

    def __init__(self, status: int, seconds: float) -> None:
        super().__init__(f"HTTP {status}, Retry-After {seconds:.0f} s")
        self.status, self.seconds = status, seconds


class Interrupted(Exception):
    """A body ended early (reset, timeout, cut short): worth another try from the bytes on disk."""

    def __init__(self, message: str, received: int) -> None:
        super().__init__(message)
        self.received = received  # bytes of the body that reached the .part before it ended


def download_model_files(model_size: str, models_dir: str, base_url: str | None = None,
                         check: Callable[[str], None] | None = None) -> str:
    """Make sure the 7 files of `model_size` are complete in <models_dir>/<model_size>/; return it.

    check(model_dir), if given, runs after this run downloaded files, still holding the lock: runs
    that waited for it then find files already checked, or a damaged one already moved aside."""
    check_model_size(model_size)  # first: a size like "../x" must never become a path
    model_dir = make_model_dir(models_dir, model_size)
    if missing_files(model_dir):
        check_writable(model_dir)
        base_url = resolve_base_url(base_url)
        with model_dir_lock(model_dir):
            missing = missing_files(model_dir)  # another run may have fetched them while we waited
            if missing:
                session = new_session()
                for name in missing:
                    download_file(session, model_file_url(base_url, model_size, name), os.path.join(model_dir, name))
                if check:
                    check(model_dir)
    return model_dir


def missing_files(model_dir: str) -> list[str]:
    """The model files not in model_dir yet; one that is there but not a regular file is refused, since
    downloading would replace it (a FIFO, a device) or fail on it (a directory)."""
    for name in MODEL_FILES:
        check_regular_or_absent(os.path.join(model_dir, name), follow_symlinks=True)
    return [name for name in MODEL_FILES if not os.path.isfile(os.path.join(model_dir, name))]


def check_regular_or_absent(path: str, follow_symlinks: bool = False) -> None:
    """Every file the tool writes must be a regular file or not exist yet. A symlink is followed only
    for a final name (a model folder of links is fine): a .part is written through, so it must be its own."""
    try:
        mode = (os.stat if follow_symlinks else os.lstat)(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise GPT2Error(f"cannot look at {path}: {e.strerror}; fix it or choose another --models_dir") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a symbolic link" if stat.S_ISLNK(mode) else "a device or socket")
        raise GPT2Error(f"{path} is {kind}, not a regular file: move it away, or choose another --models_dir")


def check_model_size(model_size: str) -> None:
    if model_size not in MODEL_SIZES:
        raise GPT2Error(f"unknown model size {model_size!r}; choose one of {', '.join(MODEL_SIZES)}")


def make_model_dir(models_dir: str, model_size: str) -> str:
    model_dir = os.path.join(models_dir, model_size)
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as e:
        raise GPT2Error(f"cannot create directory {model_dir}: {e.strerror}; choose another --models_dir") from None
    return model_dir


def check_writable(model_dir: str) -> None:
    """Fail early with a clear message rather than halfway through the first download."""
    if not os.access(model_dir, os.W_OK | os.X_OK):
        raise GPT2Error(f"cannot write to directory {model_dir}; fix its permissions or choose another --models_dir")


def resolve_base_url(base_url: str | None = None) -> str:
    """The argument wins, then the environment variable GPT2_BASE_URL, then OpenAI's storage."""
    return (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def model_file_url(base_url: str, model_size: str, filename: str) -> str:
    return f"{base_url.rstrip('/')}/{model_size}/{filename}"


# ---------------------------------------------------------------- one run at a time


@contextlib.contextmanager
def model_dir_lock(model_dir: str) -> Iterator[None]:
    """Hold <model_dir>/.download.lock while downloading, so two runs never write the same .part.

    filelock's Unix lock is an flock(2) on the file: the kernel releases it when its holder exits,
    even by kill -9, so a lock left by a dead run never blocks the next one.
    """
    from filelock import FileLock, Timeout

    check_regular_or_absent(os.path.join(model_dir, LOCK_FILE))
    lock = FileLock(os.path.join(model_dir, LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another run that is downloading into {model_dir} ...", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------- HTTP


def new_session() -> "requests.Session":
    """A requests session that retries refused connections and 429/5xx answers with backoff."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    class CappedRetry(Retry):
        """urllib3 sleeps as long as Retry-After says (hours, silently): wait at most MAX_RETRY_AFTER,
        saying so, and give up at once on a longer wait, to say when to try again."""

        def sleep_for_retry(self, response: "urllib3.BaseHTTPResponse") -> bool:
            seconds = self.get_retry_after(response)
            if not seconds:
                return False
            if seconds > MAX_RETRY_AFTER:
                raise ServerAsksToWait(response.status, seconds)
            print(f"the server answered HTTP {response.status} and asks to wait {seconds:.0f} s: waiting ...",
                  file=sys.stderr, flush=True)
            time.sleep(seconds)
            return True

    # a refused connection is retried less: it is more often a wrong --base_url than a passing fault
    retry = CappedRetry(total=RETRIES, connect=2, backoff_factor=BACKOFF, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=("GET",), raise_on_status=False)
    session = requests.Session()
    # requests asks for gzip by default, and a web server may then compress JSON and text on the way,
    # with a Content-Length (and even Content-MD5) of the compressed body: the files must come as they are.
    session.headers["Accept-Encoding"] = "identity"
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


def download_file(session: "requests.Session", url: str, path: str) -> None:
    """Download `url` to `path` through `path`.part (resuming it when it can), verify it, rename it."""
    part = path + ".part"
    for written in (part, facts_path(part), facts_path(part) + ".tmp"):
        check_regular_or_absent(written)
    failures = 0  # tries in a row that brought less than PROGRESS bytes
    while True:
        try:
            facts = fetch_into_part(session, url, part)
            break
        except Interrupted as e:
            failures = 0 if e.received >= PROGRESS else failures + 1
            if failures > RETRIES:
                raise GPT2Error(f"{e} ({failures} tries in a row failed); run again to resume, "
                                f"or {NETWORK_HINT}") from None
            time.sleep(BACKOFF * 2 ** max(failures - 1, 0))
    check_md5(part, facts.get("md5"), url)
    try:
        os.replace(part, path)  # atomic: the final name only ever names a complete file
    except OSError as e:
        raise GPT2Error(f"cannot rename {part} to {path}: {e.strerror}") from None
    remove_quietly(facts_path(part))


def fetch_into_part(session: "requests.Session", url: str, part: str) -> dict:
    """One GET that brings `part` to the whole file, resuming when the saved facts allow; its facts."""
    offset, facts = size_on_disk(part), read_facts(part)
    resume = bool(offset and facts and offset < facts["size"])
    headers = {"Range": f"bytes={offset}-"} if resume else {}
    if resume and facts.get("validator"):
        headers["If-Range"] = facts["validator"]  # the file changed since: the server sends all of it
    with open_response(session, url, headers) as response:
        if response.status_code == 206 and resume:
            check_content_range(response, offset, facts["size"], part, url)  # else it starts over
        else:  # a first request, or the server ignored Range or If-Range: the whole file, from byte 0
            if response.status_code == 206 and "Range" not in headers:
                check_whole_file_range(response, url)
            offset, facts = 0, facts_of(response, url)
            write_facts(part, facts)  # before any byte of the body, so a later run can resume
        receive_body(response, part, offset, facts["size"], url)
    return facts


def open_response(session: "requests.Session", url: str, headers: dict) -> "requests.Response":
    import requests

    try:
        response = session.get(url, headers=headers, stream=True, timeout=TIMEOUT)
    except ServerAsksToWait as e:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() + e.seconds))
        raise GPT2Error(f"cannot download {url}: the server is busy (HTTP {e.status}) and asks to wait "
                        f"{e.seconds:.0f} s; try again after {when}, or set {BASE_URL_ENV} / --base_url") from None
    except requests.exceptions.InvalidURL as e:
        raise GPT2Error(f"invalid URL {url} ({e}); set {BASE_URL_ENV} / --base_url to an http(s) URL") from None
    except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as e:
        target = re.search(r"'([^']*)'", str(e))
        if target and target[1] != url:  # the URL was fine: the server redirected it to file://, ftp://, ...
            raise GPT2Error(f"cannot download {url}: the server redirected it to {target[1]}, which is not an "
                            f"http(s) URL; set {BASE_URL_ENV} / --base_url to another server") from None
        raise GPT2Error(f"invalid URL {url}; set {BASE_URL_ENV} / --base_url to an http(s) URL") from None
    except requests.exceptions.RequestException as e:  # refused, DNS, timeout, redirect loop: after every retry
        raise GPT2Error(f"cannot download {url}: {describe(e)}; {NETWORK_HINT}") from None
    if response.status_code == 416 and "Range" in headers:  # the .part is as long as the file, or longer
        response.close()
        return open_response(session, url, {})
    if response.status_code not in (200, 206):
        response.close()
        busy = response.status_code == 429 or response.status_code >= 500  # still so after every retry
        advice = "the server is busy or failing: try again later" if busy else "check the model size"
        raise GPT2Error(f"cannot download {url}: HTTP {response.status_code} {response.reason}; "
                        f"{advice}, or set {BASE_URL_ENV} / --base_url")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":  # stored compressed: its length and Range would count compressed bytes
        response.close()
        raise GPT2Error(f"cannot download {url}: the server sends it compressed (Content-Encoding: {encoding}); "
                        f"set {BASE_URL_ENV} / --base_url to a server that sends the files as they are")
    return response


def describe(error: Exception) -> str:
    """A short reason for a network error: 'Connection refused', 'Read timed out', ..."""
    text = str(error)
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"(Read timed out|Connection broken|timed out)"):
        if match := re.search(pattern, text):
            return match[1]
    return text or type(error).__name__


def facts_of(response: "requests.Response", url: str) -> dict:
    """What a whole-file (200) response says of the file: its size, Content-MD5 and validator."""
    length = response.headers.get("Content-Length", "").strip()
    if not length.isdigit():  # without it, a cut connection would look like a complete file
        sent = f"an invalid Content-Length ({length!r})" if length else "no Content-Length"
        raise GPT2Error(f"cannot download {url}: the server sent {sent}; "
                        f"set {BASE_URL_ENV} / --base_url to another server")
    validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
    return {"url": url, "size": int(length), "md5": response.headers.get("Content-MD5"), "validator": validator}


def check_whole_file_range(response: "requests.Response", url: str) -> None:
    """A 206 to a request for the whole file must still carry all of it: its Content-Length would
    otherwise pass for the file's size, and half a file would be kept under the final name."""
    content_range = response.headers.get("Content-Range", "")
    match = re.fullmatch(r"bytes 0-(\d+)/(\d+)", content_range.strip())
    if not match or int(match[1]) + 1 != int(match[2]):
        response.close()
        raise GPT2Error(f"cannot download {url}: the server answered a request for the whole file with part "
                        f"of it (HTTP 206, Content-Range {content_range!r}); set {BASE_URL_ENV} / --base_url "
                        "to another server")


def check_content_range(response: "requests.Response", offset: int, size: int, part: str, url: str) -> None:
    """A 206 must continue exactly where the .part ends, of a file of the size we started. If not
    (a server that sends other bytes, or a file replaced by one of another size without a validator),
    the .part cannot be trusted: it is removed, and the next try starts over from byte 0."""
    content_range = response.headers.get("Content-Range", "")
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", content_range.strip())
    if not match or int(match[1]) != offset or int(match[2]) != size:
        remove_quietly(part)
        remove_quietly(facts_path(part))
        raise Interrupted(f"the server answered a request for {url} from byte {offset} with Content-Range "
                          f"{content_range!r}, so it started over", 0)


def receive_body(response: "requests.Response", part: str, offset: int, size: int, url: str) -> None:
    """Write the body into `part` from `offset` (0 empties it first), with a progress bar on stderr.

    read1 returns whatever has arrived (one system call) instead of waiting for a full chunk, so
    when the connection drops, every byte received before is already written to the .part file.
    """
    import urllib3
    from tqdm import tqdm

    received = offset
    try:
        with open(part, "ab" if offset else "wb") as f, tqdm(
            desc=os.path.basename(url), total=size, initial=offset,
            unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
        ) as bar:
            while chunk := response.raw.read1(CHUNK_SIZE):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as e:  # reset, timeout, cut short
        raise Interrupted(f"connection lost while downloading {url} ({describe(e)}) "
                          f"after {received} of {size} bytes", received - offset) from None
    except OSError as e:  # reading errors are caught above, so these come from the disk
        raise disk_error(e, part) from None
    if received != size:
        raise Interrupted(f"download of {url} ended after {received} of {size} bytes", received - offset)


def disk_error(error: OSError, path: str) -> GPT2Error:
    if error.errno == errno.ENOSPC:
        return GPT2Error(f"no space left on device while writing {path}; free some disk space and run again to resume")
    reason = error.strerror or error
    return GPT2Error(f"cannot write {path}: {reason}; check its permissions or choose another --models_dir")


# ---------------------------------------------------------------- verifying and remembering


def check_md5(part: str, expected: str | None, url: str) -> None:
    """If the server sent a Content-MD5, compare it with the MD5 of the whole .part file on disk.

    Reading the file back (rather than hashing chunks as they arrive) checks what is really on
    disk, and covers a resumed file's old and new bytes alike.
    """
    if expected is None:
        return
    with open(part, "rb") as f:
        actual = base64.b64encode(hashlib.file_digest(f, "md5").digest()).decode("ascii")
    if actual != expected.strip():
        remove_quietly(part)  # resuming cannot repair a wrong byte somewhere, so start over next time
        remove_quietly(facts_path(part))
        raise GPT2Error(f"{url} failed its MD5 check (got {actual}, server says {expected}); "
                        "removed the partial file, run again to download it anew")


def facts_path(part: str) -> str:
    return part + ".json"


def read_facts(part: str) -> dict | None:
    """The whole-file facts saved when `part` was started, or None if they are missing or unusable."""
    try:
        with open(facts_path(part), encoding="utf-8") as f:
            facts = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(facts, dict) or not isinstance(facts.get("size"), int):
        return None
    return facts


def write_facts(part: str, facts: dict) -> None:
    """Save the facts atomically: a half-written file must never pass for the real ones."""
    path = facts_path(part)
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(facts, f)
        os.replace(path + ".tmp", path)
    except OSError as e:
        raise disk_error(e, path) from None


def size_on_disk(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # no such file yet
        return 0


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
