"""Fetching the official targets file: resumable, checksum-verified, with a progress bar.

The official `test_data.h5` is published on Google Drive (SciCode's release). `fetch` streams it
to `<dest>.part`, resumes an interrupted download with an HTTP Range request, verifies the sha256
and only then renames it into place, so a half-written or wrong file is never used.
Set `SCICODE_TARGETS_URL` to use a mirror.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from scicode import config
from scicode.errors import TargetsError

logger = logging.getLogger(__name__)
CHUNK = 1 << 20
ATTEMPTS = 5


def official_url() -> str:
    """Where the official file is downloaded from (`SCICODE_TARGETS_URL` overrides)."""
    file_id = config.manifest()["targets"]["official_gdrive_id"]
    default = f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"
    return os.environ.get("SCICODE_TARGETS_URL") or default


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK * 8):
            h.update(chunk)
    return h.hexdigest()


def fetch(
    dest: Path,
    *,
    url: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download `url` to `dest`, resuming and verifying.

    Raises:
        TargetsError: the download failed after retries, or the file's checksum is wrong.
    """
    targets = config.manifest()["targets"]
    url = url or official_url()
    sha256 = sha256 or targets["official_sha256"]
    size = size if size is not None else targets["official_bytes"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for _ in range(ATTEMPTS):
        try:
            _download(url, part, size=size, progress=progress, timeout=timeout)
            break
        except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
            last_error = e
            logger.warning("download of %s interrupted (%s); resuming", url, e)
    else:
        raise TargetsError(f"could not download {url}: {last_error}") from last_error
    digest = sha256_of(part)
    if digest != sha256:
        part.unlink(missing_ok=True)
        raise TargetsError(
            f"downloaded file has sha256 {digest}, expected {sha256}; it was deleted. Is {url} the right file?"
        )
    part.replace(dest)
    _mark_verified(dest, digest)
    return dest


def _download(url: str, part: Path, *, size: int | None, progress: bool, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have == size:
        return
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - https or a configured mirror
        if have and response.status != 206:
            have = 0  # the server ignored the range: start over
        kind = response.headers.get("Content-Type", "")
        if "text/html" in kind:
            raise TargetsError(
                f"{url} answered with a web page instead of the file (a Drive quota or consent page?); "
                "download it in a browser instead"
            )
        total = size or (have + int(response.headers.get("Content-Length") or 0)) or None
        bar = _progress(total, have, progress)
        with part.open("ab" if have else "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        bar.close()
    if size is not None and part.stat().st_size != size:
        raise OSError(f"incomplete download: {part.stat().st_size} of {size} bytes")


def _progress(total: int | None, initial: int, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc="test_data.h5", disable=not enabled)


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _mark_verified(path: Path, digest: str) -> None:
    stat = path.stat()
    _marker(path).write_text(f"{digest} {stat.st_size} {stat.st_mtime_ns}\n")


def verified_digest(path: Path) -> str:
    """The file's sha256, from a marker written at download or a previous check when still valid."""
    stat = path.stat()
    marker = _marker(path)
    if marker.is_file():
        parts = marker.read_text().split()
        if len(parts) == 3 and parts[1:] == [str(stat.st_size), str(stat.st_mtime_ns)]:
            return parts[0]
    digest = sha256_of(path)
    with contextlib.suppress(OSError):
        _mark_verified(path, digest)
    return digest
