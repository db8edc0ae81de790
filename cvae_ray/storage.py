"""Copy directories between local disk and any filesystem pyarrow supports (S3, GCS, ...)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pyarrow import fs as pafs


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` names a remote filesystem (``scheme://...``) rather than a local path."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def local_path(location: str | Path) -> Path:
    """Strip a ``file://`` prefix from a local location."""
    text = str(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def download_dir(uri: str) -> Path:
    """Copy a remote directory into a new temporary local directory.

    Args:
        uri: Remote directory, e.g. ``s3://bucket/bundles/best``.

    Returns:
        The local copy (the caller may delete it when done).
    """
    target = Path(tempfile.mkdtemp(prefix="cvae_ray_"))
    source_fs, source_path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(source_path, str(target), source_filesystem=source_fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return target


def upload_dir(local: str | Path, uri: str) -> None:
    """Copy a local directory to a remote location (overwriting files of the same name)."""
    dest_fs, dest_path = pafs.FileSystem.from_uri(uri)
    dest_fs.create_dir(dest_path, recursive=True)
    pafs.copy_files(str(local), dest_path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=dest_fs)


def replace_dir(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``, replacing what was there, as atomically as the OS allows."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        source.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        source.rename(target)
