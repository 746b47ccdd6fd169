"""The files a request's payload refers to: fal's ``File`` objects and bare media URLs.

fal returns generated files as objects ``{"url", "content_type", "file_name",
"file_size"}``, alone or in lists, at any depth of ``json_output`` (``images[0]``,
``video``, ``audio_file``...); inputs refer to uploaded files the same way, or as a bare URL
string (``image_url``). `extract` finds both in one decoded payload and says where each is,
as a path (``$.images[0]``, ``$.image_url``): the same path in the same request is the same
reference from one run to the next.

A ``File`` object is a mapping with a string ``url`` (http or https) and at least one of
the other three fields; its host is not judged here (the downloads do: a ``File`` on a host
not allowed is recorded and refused, not silently dropped). A bare string counts only when
it is a URL whose host ``bare_host(host)`` accepts (fal's media hosts), so a prompt or a
model's weights URL is never taken for an output file. Declared fields that are not what
fal sends (a size that is not a whole number of bytes, a name or type that is not short
text) are kept as unknown (None), never trusted: a declared size only ever makes the
download stricter.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: the fields of fal's File type besides ``url``
FILE_FIELDS = ("content_type", "file_name", "file_size")
#: the longest URL kept (fal's are far shorter; a longer one is no file of fal's)
MAX_URL = 4096
#: the longest declared name or content type kept
MAX_TEXT = 255
#: the most references taken from one payload (a payload listing more is cut there)
MAX_REFS = 1000
#: the deepest nesting searched
MAX_DEPTH = 64
#: the largest declared size believed (2**53: what every JSON reader keeps exact)
MAX_DECLARED = 2**53
SIDES = ("output", "input")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCHEMES = ("https://", "http://")


@dataclass(frozen=True)
class FileRef:
    """One reference to a file in one payload."""

    #: ``output`` (``json_output``) or ``input`` (``json_input``)
    side: str
    #: where in the payload: ``$.images[0]``, ``$["a key"].video``
    path: str
    url: str
    content_type: str | None = None
    file_name: str | None = None
    declared_size: int | None = None


def _path(keys: list[str | int]) -> str:
    out = "$"
    for key in keys:
        if isinstance(key, int):
            out += f"[{key}]"
        elif _IDENT.match(key):
            out += f".{key}"
        else:
            escaped = key.replace("\\", "\\\\").replace('"', '\\"')
            out += f'["{escaped}"]'
    return out


def _web_url(value: Any) -> str | None:
    """``value`` if it is an http(s) URL with a host, of a length worth keeping."""
    if not isinstance(value, str) or len(value) > MAX_URL:
        return None
    if not value.startswith(("https://", "http://")):
        return None
    try:
        host = urlsplit(value).hostname
    except ValueError:
        return None
    return value if host else None


def _text(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_TEXT and value.isprintable():
        return value
    return None


def _size(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_DECLARED else None


def file_ref(side: str, path: str, obj: dict[str, Any]) -> FileRef | None:
    """``obj`` as a reference if it is a ``File`` object (see the module's docstring)."""
    url = _web_url(obj.get("url"))
    if url is None or not any(f in obj for f in FILE_FIELDS):
        return None
    return FileRef(
        side=side,
        path=path,
        url=url,
        content_type=_text(obj.get("content_type")),
        file_name=_text(obj.get("file_name")),
        declared_size=_size(obj.get("file_size")),
    )


def extract(payload: Any, side: str, bare_host: Callable[[str], bool]) -> list[FileRef]:
    """Every file ``payload`` refers to, in document order; see the module's docstring.

    Runs over every payload of a mirror once: scalars are skipped without building their
    path, which is made only for a reference found."""
    refs: list[FileRef] = []
    keys: list[str | int] = []

    def bare(value: str) -> None:
        url = _web_url(value)
        if url is not None and bare_host((urlsplit(url).hostname or "").lower()):
            refs.append(FileRef(side=side, path=_path(keys), url=url))

    def walk(value: Any, depth: int) -> None:
        if type(value) is dict:
            if "url" in value:
                ref = file_ref(side, _path(keys), value)
                if ref is not None:
                    refs.append(ref)
                    return
            items: Any = value.items()
        else:
            items = enumerate(value)
        if depth >= MAX_DEPTH:
            return
        for key, child in items:
            if len(refs) >= MAX_REFS:
                return
            kind = type(child)
            if kind is dict or kind is list:
                keys.append(key)
                walk(child, depth + 1)
                keys.pop()
            elif kind is str and child.startswith(_SCHEMES):
                keys.append(key)
                bare(child)
                keys.pop()

    kind = type(payload)
    if kind is dict or kind is list:
        walk(payload, 0)
    elif kind is str and payload.startswith(_SCHEMES):
        bare(payload)
    return refs
