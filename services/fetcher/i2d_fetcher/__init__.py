"""The fetcher: downloads, filters, resizes and encodes images; one APPEND record per row."""
