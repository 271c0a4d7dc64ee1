"""Object names every adapter accepts: relative, `/`-separated, no empty or dot segments.

One rule for all stores, so a name that works on a laptop also works on S3 and back; and a name
can never climb out of a local root (`..`) or be read two ways (`a//b`, `./a`).
"""

from __future__ import annotations


def check_name(name: str) -> str:
    """Return `name` if it is a valid object name, else raise ValueError."""
    if not name:
        raise ValueError("object name is empty")
    if name.startswith("/"):
        raise ValueError(f"object name must be relative: {name!r}")
    if "\x00" in name:
        raise ValueError(f"object name contains NUL: {name!r}")
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"object name has an empty, '.' or '..' segment: {name!r}")
    return name
