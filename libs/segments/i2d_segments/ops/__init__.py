"""Operating a dataset from its segments and index, with the pipeline stopped or running:

- `reindex`: rebuild the index from the segments alone (their `__segment__` manifests);
- `verify`: check that the index and the segments agree (sizes, sha256, members, rows);
- `gc`: find and remove objects no commit names (a crash between `complete()` and the index
  commit, a fenced zombie's object, abandoned uploads, claim checks left behind).

Each is a library function the CLI's command of the same name wraps (`cli/i2d_cli/`).
"""
