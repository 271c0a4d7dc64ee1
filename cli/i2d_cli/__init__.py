"""The img2dataset command line: wires the services and the kernel adapters."""
