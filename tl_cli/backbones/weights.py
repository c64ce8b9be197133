"""Pretrained weights fetched on first use into torch hub's cache, checked against their published hash.

torchvision names every weights file `<name>-<first hex digits of its SHA-256>.pth`
(`resnet18-f37072fd.pth`); the download is hashed as it streams and refused when the digits
differ. The bytes go to a temporary file beside the destination that this process holds locked,
then fsync and rename: a kill at any moment leaves at most a `.tmp-` file that no lookup uses and
the next download removes. Environment:

- `TL_WEIGHTS_MIRROR=http(s)://host[/prefix]`: fetch `<mirror><path of the official URL>` instead.
- `TL_OFFLINE=1`: never touch the network; a missing file is an error naming where to put it.
- `TL_DOWNLOAD_TIMEOUT=SECONDS` (default 30): limit for connecting and for each read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import re
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tl_cli.errors import ConfigError, DownloadError, WeightsNotFound
from tl_cli.runtime.atomic import TMP_PREFIX, _fsync_dir, _umask
from tl_cli.runtime.cache_dirs import torch_checkpoints_dir
from tl_cli.runtime.env import env_flag
from tl_cli.runtime.locks import remove_unlocked_temporaries, try_lock_fd
from tl_cli.runtime.progress import Reporter

DEFAULT_TIMEOUT = 30.0
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.")  # as torch.hub's HASH_REGEX, at least 6 digits
_CHUNK = 1 << 16


_NO_DOWNLOADS = False  # set by `no_downloads()`


def offline() -> bool:
    """True when TL_OFFLINE asks tl never to use the network (or inside `no_downloads()`)."""
    return _NO_DOWNLOADS or env_flag("TL_OFFLINE")


@contextlib.contextmanager
def no_downloads():
    """Weights are looked up on this machine only, as under TL_OFFLINE=1: for callers that can do
    without them (`tl suggest` reading cached features) and must not download 100 MB to find out."""
    global _NO_DOWNLOADS
    before, _NO_DOWNLOADS = _NO_DOWNLOADS, True
    try:
        yield
    finally:
        _NO_DOWNLOADS = before


def download_timeout() -> float:
    """Seconds allowed to connect and for each read (TL_DOWNLOAD_TIMEOUT, default 30)."""
    raw = os.environ.get("TL_DOWNLOAD_TIMEOUT", "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"TL_DOWNLOAD_TIMEOUT={raw!r} is not a positive number of seconds")
    return value


def mirrored(url: str, mirror: str | None = None) -> str:
    """`url` with its scheme and host replaced by TL_WEIGHTS_MIRROR (its path kept).

    Example:
        >>> mirrored("https://download.pytorch.org/models/resnet18-f37072fd.pth", "http://m.lan/pt")
        'http://m.lan/pt/models/resnet18-f37072fd.pth'
    """
    mirror = os.environ.get("TL_WEIGHTS_MIRROR", "") if mirror is None else mirror
    if not mirror:
        return url
    m = urllib.parse.urlsplit(mirror)
    if m.scheme not in ("http", "https") or not m.netloc or m.query or m.fragment:
        raise ConfigError(f"TL_WEIGHTS_MIRROR={mirror!r} is not an http(s)://host[/prefix] URL")
    return mirror.rstrip("/") + urllib.parse.urlsplit(url).path


def expected_hash_prefix(filename: str) -> str | None:
    """The SHA-256 prefix torchvision puts in a weights file name, or None if it has none."""
    m = _HASH_IN_NAME.search(filename)
    return m.group(1) if m else None


def fetch_weights(url: str, dest: Path | None = None, reporter: Reporter | None = None,
                  timeout: float | None = None, label: str = "") -> Path:
    """Return the weights file of `url` from torch hub's cache, downloading it first if absent.

    Args:
        url: the official URL (torchvision's `Weights.url`); TL_WEIGHTS_MIRROR is applied here.
        dest: where the file belongs; default `$TORCH_HOME/hub/checkpoints/<file name of url>`.
        reporter: progress in bytes; default a rich bar on stderr (silent when not a terminal).
        timeout: seconds to connect and per read; default TL_DOWNLOAD_TIMEOUT or 30.
        label: the backbone's name, for messages.

    Raises:
        WeightsNotFound: TL_OFFLINE=1 and the file is not there.
        DownloadError: network failure, HTTP error, timeout, hash mismatch, disk full. Nothing
            is left at `dest` in any of these cases.

    Example:
        >>> fetch_weights("https://download.pytorch.org/models/resnet18-f37072fd.pth")
        PosixPath('/home/me/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth')
    """
    dest = Path(dest) if dest is not None else torch_checkpoints_dir() / url.rsplit("/", 1)[-1]
    if dest.is_file():
        return dest
    source = mirrored(url)
    if offline():
        raise WeightsNotFound(
            f"pretrained weights{' for ' + label if label else ''} are not on this machine: {dest} is missing"
            " (TL_OFFLINE=1: no download)",
            hint=f"download {source} and put it at {dest}; or unset TL_OFFLINE; or pass --weights FILE or --no-pretrained",
        )
    if reporter is None:
        from tl_cli.runtime.progress import RichReporter

        reporter = RichReporter(unit="bytes")
    _download(source, dest, reporter, download_timeout() if timeout is None else timeout)
    return dest


def _by_hand(url: str, dest: Path) -> str:
    return f"download {url} yourself (or set TL_WEIGHTS_MIRROR) and put it at {dest}"


def _download(url: str, dest: Path, reporter: Reporter, timeout: float) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_unlocked_temporaries(dest.parent, dest.name)  # left by killed downloads
        fd, tmp = _locked_temp(dest)
    except OSError as exc:
        raise _os_error(exc, url, dest) from exc
    try:
        with os.fdopen(os.dup(fd), "wb", buffering=0) as fh:  # unbuffered: bytes reach the file as they arrive
            digest = _stream(url, fh, reporter, timeout, dest)
            os.fsync(fh.fileno())
        want = expected_hash_prefix(dest.name)
        if want is not None and not digest.startswith(want):
            raise DownloadError(
                f"hash mismatch for {url}: its SHA-256 starts {digest[:len(want)]}, the file name says {want}",
                hint=f"the file was not kept; check TL_WEIGHTS_MIRROR or the network, or {_by_hand(url, dest)}",
            )
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except OSError as exc:
        raise _os_error(exc, url, dest) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # gone already after a successful rename
        os.close(fd)  # releases the lock


def _locked_temp(dest: Path) -> tuple[int, str]:
    """A new `.tmp-<name>.*.part` beside dest, locked by us (kept locked until closed)."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + dest.name + ".", suffix=".part", dir=dest.parent)
        os.fchmod(fd, 0o666 & ~_umask())
        try_lock_fd(fd)
        # Another process's clean-up may have removed it between mkstemp and the lock: start over.
        try:
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)


def _write(fh, chunk: bytes) -> None:
    fh.write(chunk)


def _stream(url: str, fh, reporter: Reporter, timeout: float, dest: Path) -> str:
    """Copy the response body of `url` into `fh`; returns its SHA-256 (hex)."""
    h = hashlib.sha256()
    req = urllib.request.Request(url, headers={"User-Agent": "tl-cli"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            reporter.log(f"downloading {url} to {dest}")
            reporter.start(f"downloading {dest.name}", total)
            got = 0
            try:
                while chunk := resp.read1(_CHUNK):  # what has arrived, not a full 64 kB
                    h.update(chunk)
                    _write(fh, chunk)
                    got += len(chunk)
                    reporter.advance(len(chunk))
            finally:
                reporter.stop()
            if total is not None and got != total:
                raise DownloadError(f"download of {url} was cut off after {got:,} of {total:,} bytes",
                                    hint=f"run again, or {_by_hand(url, dest)}")
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"HTTP {exc.code} {exc.reason} from {url}", hint=_by_hand(url, dest)) from exc
    except urllib.error.URLError as exc:
        raise _network_error(exc.reason, url, dest, timeout) from exc
    except (OSError, EOFError, ValueError, http.client.HTTPException) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise  # a local write error, mapped by the caller
        raise _network_error(exc, url, dest, timeout) from exc
    return h.hexdigest()


def _network_error(reason, url: str, dest: Path, timeout: float) -> DownloadError:
    host = urllib.parse.urlsplit(url).netloc
    if isinstance(reason, (socket.timeout, TimeoutError)):
        what = f"no answer from {host} within {timeout:g} s (TL_DOWNLOAD_TIMEOUT)"
    elif isinstance(reason, socket.gaierror):
        what = f"cannot resolve {host} (no network?)"
    elif isinstance(reason, ConnectionRefusedError):
        what = f"{host} refused the connection"
    elif isinstance(reason, (ConnectionError, EOFError)) or "IncompleteRead" in type(reason).__name__:
        what = f"the connection to {host} broke off"
    else:
        what = f"network error ({type(reason).__name__}: {reason})"
    return DownloadError(f"download of {url} failed: {what}", hint=_by_hand(url, dest))


def _os_error(exc: OSError, url: str, dest: Path) -> DownloadError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "disk full"
    elif exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        what = f"cannot write {dest.parent} ({exc.strerror}); set TORCH_HOME to a writable folder"
    else:
        what = f"{type(exc).__name__}: {exc.strerror or exc}"
    return DownloadError(f"download of {url} to {dest} failed: {what}", hint=_by_hand(url, dest))
