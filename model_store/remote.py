"""An S3-compatible model repository (``s3://bucket/prefix``), mirrored into a local cache.

The mirror is what the rest of the model store reads, so change detection, settling and
loading work exactly as for a local repository. Objects are downloaded only when their
ETag or size changed, each to a temporary name first and renamed into place, so a reader
never sees half a file; local files whose object disappeared are removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from turnout.model_store.repository import LocalRepository, ModelSource

log = logging.getLogger("turnout.model_store")


def parse_s3_url(url: str) -> tuple[str, str]:
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"'{url}' names no bucket; expected s3://bucket[/prefix]")
    return bucket, prefix.strip("/")


class S3Repository(LocalRepository):
    def __init__(self, url: str, cache_dir: Path, *, endpoint_url: str | None = None, fs: Any = None) -> None:
        super().__init__(cache_dir)
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        if fs is None:
            import s3fs  # optional dependency: pip install 'turnout[s3]'

            client_kwargs = {"endpoint_url": endpoint_url} if endpoint_url else {}
            fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, use_listings_cache=False)
        self.fs = fs
        cache_dir.mkdir(parents=True, exist_ok=True)
        self._manifest_path = cache_dir / ".turnout-manifest.json"
        self._manifest: dict[str, list[Any]] = self._read_manifest()

    def describe(self) -> str:
        return f"{self.url} (cached in {self.root})"

    @property
    def _base(self) -> str:
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def _read_manifest(self) -> dict[str, list[Any]]:
        try:
            data = json.loads(self._manifest_path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_manifest(self) -> None:
        tmp = self._manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._manifest))
        os.replace(tmp, self._manifest_path)

    def refresh(self, model: str | None = None) -> None:
        """Mirror the bucket (or one model's part of it) into the cache (blocking)."""
        base = self._base if model is None else f"{self._base}/{model}"
        self.fs.invalidate_cache()
        try:
            listing = self.fs.find(base, detail=True)
        except FileNotFoundError:
            listing = {}
        remote: dict[str, tuple[str, int]] = {}
        for key, info in listing.items():
            if info.get("type") == "directory":
                continue
            rel = key[len(self._base) :].lstrip("/")
            if not rel or rel.startswith(".") or ".." in rel.split("/"):
                continue
            remote[rel] = (str(info.get("ETag") or info.get("etag") or ""), int(info.get("size") or 0))
        scope = "" if model is None else f"{model}/"
        changed = False
        for rel, (etag, size) in remote.items():
            local = self.root / rel
            if self._manifest.get(rel) == [etag, size] and local.is_file():
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=".dl-")
            os.close(fd)
            try:
                self.fs.get_file(f"{self._base}/{rel}", tmp)
                os.replace(tmp, local)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            self._manifest[rel] = [etag, size]
            changed = True
        for rel in [r for r in self._manifest if r.startswith(scope) and r not in remote]:
            (self.root / rel).unlink(missing_ok=True)
            del self._manifest[rel]
            changed = True
        if changed:
            self._prune_empty_dirs(self.root / model if model else self.root)
            self._write_manifest()
            log.info("repository mirror of %s updated", self.url if model is None else f"{self.url}/{model}")

    def _prune_empty_dirs(self, top: Path) -> None:
        if not top.is_dir():
            return
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(d.iterdir()):
                shutil.rmtree(d, ignore_errors=True)
        if top != self.root and top.is_dir() and not any(top.iterdir()):
            shutil.rmtree(top, ignore_errors=True)

    def read(self, name: str) -> ModelSource:
        self.refresh(name)
        return super().read(name)
