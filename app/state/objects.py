"""Objects by key in a local folder or an S3 bucket (obstore), written create-only.

Keys name immutable versions, so an object is never replaced: a second write of a key fails
with ObjectExists instead (`If-None-Match: *` on S3), and two writers cannot half-replace one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import urlparse

import obstore
from obstore.exceptions import AlreadyExistsError
from obstore.store import LocalStore, S3Store


class ObjectExists(Exception):
    """A create-only write found the key taken."""


class ObjectStore:
    """`file:///path` (or a plain path) or `s3://bucket/prefix`; AWS_* variables for S3."""

    def __init__(self, url: str, s3_endpoint_url: str | None = None) -> None:
        self.url = url
        parsed = urlparse(url)
        if parsed.scheme == "s3":
            options = {"allow_http": True} if (s3_endpoint_url or "").startswith("http:") else {}
            self._store: LocalStore | S3Store = S3Store(
                parsed.netloc,
                prefix=parsed.path.strip("/") or None,
                endpoint=s3_endpoint_url,
                client_options=options,  # type: ignore[arg-type]
            )
        elif parsed.scheme in ("file", ""):
            root = Path(parsed.path if parsed.scheme else url)
            root.mkdir(parents=True, exist_ok=True)
            self._store = LocalStore(prefix=root)
        else:
            raise ValueError(f"STORE_URL must be file://... or s3://bucket/prefix, not {url!r}")

    def create(self, key: str, data: bytes) -> None:
        """Write `key` once; ObjectExists if it is there already."""
        try:
            obstore.put(self._store, key, data, mode="create")
        except AlreadyExistsError as exc:
            raise ObjectExists(key) from exc

    def read(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError for a missing key."""
        return bytes(obstore.get(self._store, key).bytes())

    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error (S3 answers so itself, a folder does not)."""
        with contextlib.suppress(FileNotFoundError):
            obstore.delete(self._store, key)

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(
            str(meta["path"])
            for batch in obstore.list(self._store, prefix or None)
            for meta in batch
        )
