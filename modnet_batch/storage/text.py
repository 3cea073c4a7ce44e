"""What of a location may be shown: URIs without their credentials."""

from __future__ import annotations

import re
from urllib.parse import unquote

# scheme://... with a scheme of 2+ characters (so that C:\ or C:/ stay local paths on Windows)
URI_PATTERN = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://(.*)$", re.DOTALL)
# query parameters whose values are secrets (dropped from everything shown or written)
_SECRET = re.compile(r"key|secret|token|password|passwd|credential|signature|sig$", re.I)
# user-info (`user:secret@`) of a URI anywhere in a text
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]+://)[^/@\s?#]*@")
_QUERY_PARAM = re.compile(r"([?&])([^=&\s#]+)=([^&\s#]*)")


def redact(text: str) -> str:
    """`text` with every URI's user-info and secret query values removed (what may be shown,
    logged or written to a file)."""
    text = _USERINFO.sub(r"\1", text)

    def keep(m: re.Match[str]) -> str:
        return m.group(0) if not _SECRET.search(unquote(m.group(2))) else m.group(1)

    cleaned = _QUERY_PARAM.sub(keep, text)
    # a query left empty or with a dangling separator by a removal
    return re.sub(r"\?&+", "?", re.sub(r"&&+", "&", re.sub(r"[?&](?=\s|$|#)", "", cleaned)))


def shown(value: object) -> str:
    """A location (or any text naming one) as it may be printed or written."""
    return redact(str(value))
