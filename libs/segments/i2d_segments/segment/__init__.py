"""The segment format: streaming TAR writer and sequential readers, WebDataset-compatible.

See DESIGN.md "Segments": `<item_id>.<ext>`, `.json`, `.txt` per sample, members adjacent, data
offsets taken from the real stream position so one ranged read returns exactly a member.
"""

from i2d_segments.segment.format import (
    MemberLocation,
    SegmentFormatError,
    TruncatedSegmentError,
    member_name,
    split_name,
    validate_ext,
    validate_key,
)
from i2d_segments.segment.reader import (
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
    "iter_members",
    "iter_samples",
    "member_name",
    "sample_members",
    "scan_locations",
    "split_name",
    "validate_ext",
    "validate_key",
    "verify_stream",
]
