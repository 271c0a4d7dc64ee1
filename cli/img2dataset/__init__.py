"""img2dataset's Python API, on this project's download: `from img2dataset import download`."""

from img2dataset.main import download, main

__all__ = ["download", "main"]
