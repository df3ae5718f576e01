"""
Static files, served safely (see L{app.mounts.static.resource}).
"""

from app.mounts.static.conditional import MAX_RANGES, byte_ranges
from app.mounts.static.producer import CHUNK_SIZE
from app.mounts.static.resource import StaticDirectory
from app.mounts.static.types import DEFAULT_TYPE, TYPES, content_type, is_text

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_TYPE",
    "MAX_RANGES",
    "TYPES",
    "StaticDirectory",
    "byte_ranges",
    "content_type",
    "is_text",
]
