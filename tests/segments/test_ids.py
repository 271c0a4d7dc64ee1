"""Sample identities stay bounded whatever a row's key is (an index key has a size limit)."""

from __future__ import annotations

from i2d_segments.ids import MAX_KEY_ID, sample_id_for
from i2d_segments.records import UrlRow


def test_a_key_is_the_identity_as_it_is() -> None:
    assert sample_id_for("http://a/x.jpg", "000010005") == "000010005"
    assert sample_id_for("http://a/x.jpg", "k" * MAX_KEY_ID) == "k" * MAX_KEY_ID


def test_a_long_key_is_identified_by_its_hash_and_kept_in_the_row() -> None:
    long_key = "k" * 10_000
    sid = sample_id_for("http://a/x.jpg", long_key)
    assert sid.startswith("key-sha256:") and len(sid) == len("key-sha256:") + 64
    assert sid == sample_id_for("http://b/y.jpg", long_key)  # the key, not the url, decides
    assert sid != sample_id_for("http://a/x.jpg", long_key + "x")
    row = UrlRow(url="http://a/x.jpg", key=long_key)
    assert row.sample_id == sid and row.metadata_key == long_key
