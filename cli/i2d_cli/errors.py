"""Errors the `img2dataset` command reports as a message, not a traceback.

Kept apart from the modules that raise them so that `i2d_cli.main` stays light: every fetch
worker process re-imports the command's main module (multiprocessing prepares `__main__` in
each child), and `i2d_cli.inputs` would bring pyarrow into each of them.
"""

from __future__ import annotations


class InputError(ValueError):
    """The url list cannot be read as asked (missing file, unknown format, missing column)."""
