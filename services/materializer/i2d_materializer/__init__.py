"""The materializer: turns closed segments into img2dataset's metadata parquet and stats."""
