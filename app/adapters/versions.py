"""Version ids and where a version's files live in the object store.

A version's id is the sha256 of its two files (each hashed, then the pair), so the same files
always make the same version, and a version can be checked against its id. Its objects live
under `<project>/<id>/`, never under a name a client chose.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct

from app.adapters import peft_format as fmt
from app.errors import InvalidName, shorten
from app.state import ObjectExists, ObjectStore

# `name@version`: a version is its full id or a prefix of at least 12 hex digits (as git and
# docker take short ids), matched against the name's own history only.
_PIN = re.compile(r"^[0-9a-f]{12,64}$")


def version_id(config: bytes, weights: bytes) -> str:
    pair = hashlib.sha256(config).digest() + hashlib.sha256(weights).digest()
    return hashlib.sha256(pair).hexdigest()


def safetensors_header(data: bytes) -> tuple[int, dict]:
    """(length, parsed JSON) of a safetensors file's header, which its first 8 bytes size."""
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8 : 8 + length])


def canonical_safetensors(data: bytes) -> bytes:
    """The same file with its header metadata in sorted order.

    safetensors writes `__metadata__` from a hash map, in an order that changes from call to
    call, so the same weights would otherwise make different bytes, and different versions.
    The header keeps its length (padded with spaces, as the format allows), so no offset moves.
    """
    length, header = safetensors_header(data)
    metadata = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    text = json.dumps({**ordered, **header}, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:
        return data
    return data[:8] + text.ljust(length) + data[8 + length :]


def split_ref(ref: str, param: str) -> tuple[str, str | None]:
    """`name` -> (name, None); `name@version` -> (name, version): 422 for a malformed one."""
    name, at, pin = ref.partition("@")
    fmt.check_name(name, param)
    if at and not _PIN.fullmatch(pin):
        raise InvalidName(
            f"{shorten(ref)!r}: after '@' comes a version id, 12 to 64 hex digits", param
        )
    return name, pin if at else None


class VersionFiles:
    """The two files of a version in the object store."""

    NAMES = (fmt.CONFIG_FILE, fmt.WEIGHTS_FILE)

    @staticmethod
    def key(project: str, version: str, filename: str) -> str:
        return f"{project}/{version}/{filename}"

    @classmethod
    def write(
        cls, objects: ObjectStore, project: str, version: str, files: dict[str, bytes]
    ) -> bool:
        """Write both files create-only; False if they were there already (same id, same bytes)."""
        created = False
        for filename in cls.NAMES:
            try:
                objects.create(cls.key(project, version, filename), files[filename])
                created = True
            except ObjectExists:
                pass
        return created

    @classmethod
    def read(cls, objects: ObjectStore, project: str, version: str) -> dict[str, bytes]:
        return {f: objects.read(cls.key(project, version, f)) for f in cls.NAMES}

    @classmethod
    def delete(cls, objects: ObjectStore, project: str, version: str) -> None:
        for filename in cls.NAMES:
            objects.delete(cls.key(project, version, filename))
