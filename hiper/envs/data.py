"""Locate shared data and unpack archives into a local cache, once and atomically.

Layout conventions:

* ``$HIPER_SHARED`` (default ``<repo>/../shared``) holds read-only archives, e.g.
  ``data/alfworld/json_2.1.1.tar.xz``.
* ``$HIPER_CACHE`` (default ``~/.cache/hiper``) receives unpacked copies, e.g.
  ``alfworld/json_2.1.1/{train,valid_seen,valid_unseen,valid_train}``.

Unpacking is safe under concurrency (several test processes or pool workers may ask at once): a
file lock serialises the work, the archive's sha256 is checked first, the archive is extracted into
a temporary sibling directory and renamed into place only when complete, so a half-unpacked tree is
never visible.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

#: sha256 of ``data/alfworld/json_2.1.1.tar.xz`` as recorded in its SOURCE.md.
ALFWORLD_ARCHIVE = "json_2.1.1.tar.xz"
ALFWORLD_ARCHIVE_SHA256 = "6fddd959039c7b552bff09ae098ce521a6685725f3230df950ae5bd0776306cd"
ALFWORLD_JSON_DIR = "json_2.1.1"


class DataNotFoundError(FileNotFoundError):
    """Raised when a data set cannot be found; the message says how to provide it."""


def repo_root() -> Path:
    """The source checkout root (the directory holding ``hiper/``)."""
    return Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """``$HIPER_SHARED`` if set, else ``<repo>/../shared`` (may not exist)."""
    env = os.environ.get("HIPER_SHARED")
    return Path(env).expanduser() if env else repo_root().parent / "shared"


def cache_dir() -> Path:
    """``$HIPER_CACHE`` if set, else ``~/.cache/hiper`` (not created here)."""
    env = os.environ.get("HIPER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hiper"


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk_bytes`` chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def unpack_once(archive: Path, dest: Path, member_root: str, sha256: str | None = None) -> Path:
    """Extract ``archive`` so that ``dest/member_root`` exists, exactly once; return that path.

    ``member_root`` is the archive's top-level directory. If ``dest/member_root`` already exists it
    is returned untouched. Otherwise, under an exclusive lock on ``dest/.lock``, the archive's
    sha256 is checked (``ValueError`` on mismatch), it is extracted into a temporary directory
    inside ``dest`` and the finished tree is renamed to ``dest/member_root``.
    """
    target = dest / member_root
    if target.is_dir():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():  # another process finished while we waited for the lock
            return target
        if sha256 is not None:
            got = sha256_file(archive)
            if got != sha256:
                raise ValueError(f"{archive}: sha256 {got} does not match the expected {sha256}")
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            if not (tmp / member_root).is_dir():
                raise ValueError(f"{archive} has no top-level directory {member_root!r}")
            os.rename(tmp / member_root, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _json_root(candidate: Path) -> Path | None:
    """The ``json_2.1.1``-style directory (the one holding split folders) under ``candidate``."""
    for path in (candidate / ALFWORLD_JSON_DIR, candidate):
        if (path / "valid_unseen").is_dir() or (path / "train").is_dir():
            return path
    return None


def alfworld_json_dir(data_dir: str | os.PathLike[str] | None = None, unpack: bool = True) -> Path:
    """The directory holding the ALFWorld split folders (``train``, ``valid_seen``, ``valid_unseen``).

    Discovery order:

    1. ``data_dir`` (either an ``$ALFWORLD_DATA``-style root containing ``json_2.1.1/`` or the
       ``json_2.1.1`` directory itself);
    2. ``$ALFWORLD_DATA`` (root containing ``json_2.1.1/``, as written by ``alfworld-download``),
       skipped when it has no game files;
    3. the cache ``$HIPER_CACHE/alfworld/json_2.1.1``, unpacked on first use (if ``unpack``) from
       ``$HIPER_SHARED/data/alfworld/json_2.1.1.tar.xz``;
    4. otherwise :class:`DataNotFoundError` explaining how to get the data.
    """
    if data_dir is not None:
        found = _json_root(Path(data_dir).expanduser())
        if found is None:
            raise DataNotFoundError(
                f"ALFWorld data_dir={data_dir!s} has neither {ALFWORLD_JSON_DIR}/<split>/ nor <split>/ folders"
            )
        return found
    # ``import alfworld`` itself sets ALFWORLD_DATA=~/.cache/alfworld (and creates it, empty) when unset,
    # so a set-but-empty ALFWORLD_DATA falls through to the cache instead of failing.
    env = os.environ.get("ALFWORLD_DATA")
    if env:
        found = _json_root(Path(env).expanduser())
        if found is not None:
            return found
    cached = cache_dir() / "alfworld" / ALFWORLD_JSON_DIR
    if cached.is_dir():
        return cached
    archive = shared_dir() / "data" / "alfworld" / ALFWORLD_ARCHIVE
    if unpack and archive.is_file():
        return unpack_once(archive, cache_dir() / "alfworld", ALFWORLD_JSON_DIR, ALFWORLD_ARCHIVE_SHA256)
    checked = f" ($ALFWORLD_DATA={env} has no {ALFWORLD_JSON_DIR}/)" if env else ""
    raise DataNotFoundError(
        f"ALFWorld game files not found{checked}. Either run `alfworld-download` (from the alfworld package) and set "
        "ALFWORLD_DATA to the folder it wrote (the one containing json_2.1.1/), pass data_dir=..., or "
        f"provide the archive {archive} (set HIPER_SHARED to the folder holding data/alfworld/)."
    )


def alfworld_data_available() -> bool:
    """True if ALFWorld game files can be found (or unpacked) without raising."""
    try:
        alfworld_json_dir(unpack=False)
        return True
    except DataNotFoundError:
        return (shared_dir() / "data" / "alfworld" / ALFWORLD_ARCHIVE).is_file()
