"""The appender: the single writer of segments. Owns APPEND partitions, writes TAR segments to
the store, commits each one to the index in one fenced transaction, then announces it."""
