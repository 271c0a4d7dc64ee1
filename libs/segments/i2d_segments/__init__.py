"""The shared kernel: segment format, records, ports and adapters, settings and the reader API.

Nothing here imports a service; every service imports from here.
"""

__version__ = "0.1.0"
