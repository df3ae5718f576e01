"""
The project's own table of file extensions and their media types.

Static files take their C{Content-Type} from here, never from the machine's
C{/etc/mime.types} (which Python's C{mimetypes} module reads), so that a file
is served with the same type on every machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

#: The type of a file whose extension is not in L{TYPES}.
DEFAULT_TYPE = "application/octet-stream"

#: Lower-case extension (with its dot) -> media type.
TYPES: Mapping[str, str] = MappingProxyType(
    {
        # Text and documents
        ".html": "text/html",
        ".htm": "text/html",
        ".xhtml": "application/xhtml+xml",
        ".css": "text/css",
        ".txt": "text/plain",
        ".text": "text/plain",
        ".md": "text/markdown",
        ".csv": "text/csv",
        ".tsv": "text/tab-separated-values",
        ".ics": "text/calendar",
        ".vtt": "text/vtt",
        ".xml": "application/xml",
        ".xsl": "application/xml",
        ".rss": "application/rss+xml",
        ".atom": "application/atom+xml",
        ".json": "application/json",
        ".jsonld": "application/ld+json",
        ".map": "application/json",
        ".webmanifest": "application/manifest+json",
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".pdf": "application/pdf",
        ".rtf": "application/rtf",
        ".epub": "application/epub+zip",
        ".doc": "application/msword",
        ".docx": (
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        ),
        ".xls": "application/vnd.ms-excel",
        ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ".ppt": "application/vnd.ms-powerpoint",
        ".pptx": (
            "application/vnd.openxmlformats-officedocument.presentationml.presentation"
        ),
        ".odt": "application/vnd.oasis.opendocument.text",
        ".ods": "application/vnd.oasis.opendocument.spreadsheet",
        ".odp": "application/vnd.oasis.opendocument.presentation",
        # Images
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".gif": "image/gif",
        ".webp": "image/webp",
        ".avif": "image/avif",
        ".svg": "image/svg+xml",
        ".ico": "image/vnd.microsoft.icon",
        ".bmp": "image/bmp",
        ".tif": "image/tiff",
        ".tiff": "image/tiff",
        # Fonts
        ".woff": "font/woff",
        ".woff2": "font/woff2",
        ".ttf": "font/ttf",
        ".otf": "font/otf",
        # Audio and video
        ".mp3": "audio/mpeg",
        ".ogg": "audio/ogg",
        ".oga": "audio/ogg",
        ".opus": "audio/ogg",
        ".wav": "audio/wav",
        ".flac": "audio/flac",
        ".m4a": "audio/mp4",
        ".mp4": "video/mp4",
        ".m4v": "video/mp4",
        ".webm": "video/webm",
        ".ogv": "video/ogg",
        ".mov": "video/quicktime",
        # Archives and binaries
        ".zip": "application/zip",
        ".gz": "application/gzip",
        ".tgz": "application/gzip",
        ".bz2": "application/x-bzip2",
        ".xz": "application/x-xz",
        ".zst": "application/zstd",
        ".tar": "application/x-tar",
        ".7z": "application/x-7z-compressed",
        ".wasm": "application/wasm",
        ".bin": "application/octet-stream",
    }
)

#: Types outside C{text/*} that are text, and so get a charset.
_TEXT_APPLICATION_TYPES = frozenset(
    {"application/json", "application/xml", "application/javascript"}
)


def is_text(media_type: str) -> bool:
    """
    Whether C{media_type} is text, and so is served with a charset.
    """
    return (
        media_type.startswith("text/")
        or media_type in _TEXT_APPLICATION_TYPES
        or media_type.endswith(("+xml", "+json"))
    )


def content_type(name: str) -> bytes:
    """
    The C{Content-Type} header value for a file called C{name}.
    """
    dot = name.rfind(".")
    if dot <= 0:
        return _DEFAULT_HEADER
    return _HEADERS.get(name[dot:].lower(), _DEFAULT_HEADER)


def _header(media_type: str) -> bytes:
    if is_text(media_type):
        media_type += "; charset=utf-8"
    return media_type.encode("ascii")


#: L{content_type}'s answers, made once: it is asked on every request for
#: a static file.
_HEADERS: Mapping[str, bytes] = MappingProxyType(
    {extension: _header(media_type) for extension, media_type in TYPES.items()}
)
_DEFAULT_HEADER = _header(DEFAULT_TYPE)
