"""The segment format: streaming TAR writer and sequential readers, WebDataset-compatible.

See FORMAT.md beside this package: `<item_id>.<ext>`, `.json`, `.txt` per sample, members
adjacent, a `__segment__` manifest last, data offsets taken from the real stream position so one
ranged read returns exactly a member.
"""

from i2d_segments.segment.format import (
    MemberLocation,
    SegmentFormatError,
    TruncatedSegmentError,
    is_metadata_name,
    member_name,
    split_name,
    validate_ext,
    validate_key,
    validate_metadata_name,
)
from i2d_segments.segment.stream import (
    Member,
    SegmentSample,
    VerifyResult,
    iter_members,
    iter_samples,
    scan_locations,
    verify_stream,
)
from i2d_segments.segment.writer import SegmentDigest, SegmentWriter, sample_members

__all__ = [
    "Member",
    "MemberLocation",
    "SegmentDigest",
    "SegmentFormatError",
    "SegmentSample",
    "SegmentWriter",
    "TruncatedSegmentError",
    "VerifyResult",
    "is_metadata_name",
    "iter_members",
    "iter_samples",
    "member_name",
    "sample_members",
    "scan_locations",
    "split_name",
    "validate_ext",
    "validate_key",
    "validate_metadata_name",
    "verify_stream",
]
