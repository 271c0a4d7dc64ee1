"""Contract suites: one behaviour spec run against every adapter of a port."""
