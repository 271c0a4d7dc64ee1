"""The download options the fetcher applies: img2dataset's names, defaults and meanings.

One frozen model shared by the fetcher service settings (which extend it, so every field is
also an `I2D_<FIELD>` environment variable) and by the CLI (which turns every field into a
`--field` flag). It is sent once to each worker process that fetches rows (pool/).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from i2d_fetcher.http.netguard import parse_networks
from i2d_fetcher.imaging import formats

ResizeMode = Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"]
EncodeFormat = Literal["jpg", "png", "webp"]
HashName = Literal["md5", "sha256", "sha512"]
Interpolation = Literal["nearest", "linear", "cubic", "area", "lanczos"]

# img2dataset's four, and `noml` (img2dataset issue #365).
DEFAULT_DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex", "noml")
# img2dataset has no png default (it asks for 0-9); zlib's usual level is a sane one.
DEFAULT_PNG_COMPRESSION = 6
DEFAULT_ALLOWED_FORMATS = ("jpeg", "png", "webp", "gif", "bmp", "tiff", "avif", "ico")
# Pillow's own decompression-bomb threshold (~0.27 GB of RGB): above it, decoding is refused.
DEFAULT_MAX_DECODED_PIXELS = 89_478_485


def _list_text(text: str) -> list[Any]:
    """A list typed as text (an env var, or a flag): JSON (`["noai"]`) or comma-separated.
    Env vars reach the validators raw (NoDecode), so both forms work there too."""
    if text.strip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            pass
        else:
            if isinstance(value, list):
                return value
    return [v.strip() for v in text.split(",") if v.strip()]


class FetchOptions(BaseModel):
    # Typed as the settings' config: the fetcher's settings extend this model and a
    # BaseSettings subclass, whose model_config types must agree.
    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        frozen=True, ser_json_inf_nan="strings"
    )

    # ---------------------------------------------------------------- resize and encode
    image_size: int = Field(256, ge=1, description="Target size in pixels (see resize_mode).")
    resize_mode: ResizeMode = Field(
        "border",
        description="no; keep_ratio (smallest side = image_size); keep_ratio_largest (largest "
        "side = image_size); center_crop (smallest side, then a centred square); border "
        "(largest side, then padded to a white square).",
    )
    resize_only_if_bigger: bool = Field(
        False, description="Leave images already within image_size as they are."
    )
    upscale_interpolation: Interpolation = Field("lanczos", description="Filter to enlarge.")
    downscale_interpolation: Interpolation = Field("area", description="Filter to shrink.")
    encode_format: EncodeFormat = Field("jpg", description="jpg, png or webp.")
    encode_quality: int = Field(
        95, description="jpg/webp quality 0-100; for png the zlib compression level 0-9."
    )
    skip_reencode: bool = Field(
        False,
        description="Keep the downloaded bytes when no resize happened (resize_mode no, or "
        "resize_only_if_bigger on a small image) and they already are encode_format.",
    )
    disable_all_reencoding: bool = Field(
        False,
        description="Store the downloaded bytes as they are: no decode, no resize, no size "
        "filters; width/height and original_width/height are None.",
    )
    bbox_col: str | None = Field(
        None,
        description="Input column of [x0, y0, x1, y1] boxes (relative) to blur, e.g. faces.",
    )
    extract_exif: bool = Field(True, description="Keep the EXIF tags as a JSON string.")
    compute_hash: HashName | None = Field(
        "sha256",
        description="Hash of the downloaded bytes kept per sample (md5, sha256, sha512 or None).",
    )
    verify_hash: Annotated[tuple[str, HashName] | None, NoDecode] = Field(
        None,
        description="[column, hash type]: rows whose download does not hash to the column's "
        "value fail with 'hash mismatch'.",
    )

    # ---------------------------------------------------------------- filters
    min_image_size: int = Field(
        0, ge=0, description="Reject images whose smaller side is below this."
    )
    max_image_area: float = Field(
        math.inf, gt=0, description="Reject images with more pixels than this."
    )
    max_aspect_ratio: float = Field(
        math.inf, gt=0, description="Reject images whose long/short side ratio exceeds this."
    )
    allowed_image_formats: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_ALLOWED_FORMATS,
        description="Image formats accepted, told by the body's first bytes (magic numbers) "
        "before any decoding; other bodies fail.",
    )

    # ---------------------------------------------------------------- download
    timeout: float = Field(10, gt=0, description="Seconds allowed for one download attempt.")
    retries: int = Field(
        0,
        ge=0,
        description="Extra attempts after a transient failure (timeouts, connection "
        "errors, 408, 429, 5xx), with exponential backoff; never after a 404.",
    )
    retry_backoff: float = Field(
        0.5, ge=0, description="Seconds before the first retry; doubled per retry, jittered."
    )
    user_agent_token: str | None = Field(
        None,
        description="Added to the User-Agent; X-Robots-Tag values and robots.txt groups naming "
        "it apply (as do those naming img2dataset or img2dataset-segments).",
    )
    respect_robots_txt: bool = Field(
        True,
        description="Read each site's /robots.txt once and skip the urls it disallows for "
        "img2dataset, img2dataset-segments, user_agent_token or * ('disallowed by robots.txt'); "
        "its Crawl-delay spaces the site's requests. Off (--respect_robots_txt False): the "
        "opt-outs site owners publish there are ignored and their images downloaded anyway.",
    )
    respect_iptc_data_mining: bool = Field(
        True,
        description="Refuse images whose embedded XMP metadata says IPTC/PLUS data mining is "
        "prohibited (plus:DataMining DMI-PROHIBITED, -AIMLTRAINING, -GENAIMLTRAINING, "
        "-EXCEPTSEARCHENGINEINDEXING): 'disallowed by IPTC data mining: <value>'.",
    )
    disallowed_header_directives: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_DISALLOWED_DIRECTIVES,
        description="X-Robots-Tag directives that forbid using an image ([] to ignore them); "
        "img2dataset's default list plus noml.",
    )
    ignore_ssl_certificate: bool = Field(False, description="Accept invalid TLS certificates.")
    max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Downloads larger than this (decoded) fail."
    )
    max_body_bytes_in_flight: int = Field(
        128 * 1024 * 1024,
        ge=1,
        description="Memory for downloaded bodies held at once (being read, waiting for or in "
        "decoding), in total over the worker processes; rows wait for room before reading "
        "more. Bounds memory whatever servers send (thread_count x max_body_bytes otherwise).",
    )
    max_decoded_pixels: int = Field(
        DEFAULT_MAX_DECODED_PIXELS,
        ge=1,
        description="Decompression-bomb guard: images that would decode to more pixels fail.",
    )

    # ---------------------------------------------------------------- network safety, politeness
    # URLs come from the open internet: loopback, private, link-local (cloud metadata), CGNAT,
    # ULA, multicast and other non-public addresses are refused unless allowed here.
    allowed_networks: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="CIDRs the fetcher may reach although not public (e.g. 10.0.0.0/8, "
        "127.0.0.1/32): the only way past the address guard.",
    )
    max_redirects: int = Field(
        10, ge=0, description="Redirects followed (each hop re-checked); more fail."
    )
    connect_timeout: float = Field(5, gt=0, description="Seconds allowed to connect.")
    read_timeout: float = Field(
        5, gt=0, description="Seconds allowed between two reads (a silent server fails)."
    )
    proxy: str | None = Field(
        None,
        description="HTTP proxy for every download (proxy variables of the environment are "
        "ignored). The proxy resolves names; IP-literal urls are still checked.",
    )
    max_connections_per_host: int = Field(
        16,
        ge=1,
        description="Concurrent requests to one host at most, in total: split across the "
        "worker processes (processes_count), at least 1 each.",
    )
    host_rate_limit: float = Field(
        0,
        ge=0,
        description="Requests per second started to one host at most (0: no limit), in total: "
        "each worker process gets an equal part.",
    )
    host_failure_threshold: int = Field(
        5,
        ge=1,
        description="Consecutive connection failures or timeouts after which a host's rows "
        "fail fast for host_cooldown seconds (circuit breaker, one per worker process).",
    )
    host_cooldown: float = Field(
        60, gt=0, description="Seconds a failing host is left alone before one probe."
    )
    dns_cache_ttl: float = Field(
        300, ge=0, description="Longest time a DNS answer is cached (shorter if its TTL is)."
    )
    dns_negative_ttl: float = Field(30, ge=0, description="Time a failed DNS lookup is cached.")

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        """ "10.0.0.0/8,127.0.0.1" or a list; each must be a valid CIDR or address."""
        if value is None:
            return ()
        if isinstance(value, str):
            value = _list_text(value)
        if isinstance(value, list | tuple | set | frozenset):
            return tuple(str(n) for n in parse_networks(str(v) for v in value))
        return value

    @field_validator("disallowed_header_directives", mode="before")
    @classmethod
    def _directives(cls, value: Any) -> Any:
        """None means img2dataset's default list; "noai,noindex" is accepted as a list."""
        if value is None:
            return DEFAULT_DISALLOWED_DIRECTIVES
        if isinstance(value, str):
            value = _list_text(value)
        if isinstance(value, list | tuple | set | frozenset):
            return tuple(str(v).strip().lower() for v in value if str(v).strip())
        return value

    @field_validator("allowed_image_formats", mode="before")
    @classmethod
    def _formats(cls, value: Any) -> Any:
        """ "jpg,png" or ["JPG", "png"] -> ("jpeg", "png"); unknown names are an error."""
        if value is None:
            return DEFAULT_ALLOWED_FORMATS
        if isinstance(value, str):
            value = _list_text(value)
        if isinstance(value, list | tuple | set | frozenset):
            names = [formats.normalize(str(v)) for v in value if str(v).strip()]
            return tuple(dict.fromkeys(names))
        return value

    @field_validator("verify_hash", mode="before")
    @classmethod
    def _verify_hash(cls, value: Any) -> Any:
        """img2dataset's `[column, hash type]`; "column,sha256" (an env var) works too."""
        if isinstance(value, str):
            value = _list_text(value) or None
        return value

    @field_validator("user_agent_token", mode="after")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        return value or None

    @model_validator(mode="before")
    @classmethod
    def _png_compression_default(cls, data: Any) -> Any:
        """`--encode_format png` alone works: encode_quality's default (95) is a jpg quality."""
        png = isinstance(data, dict) and data.get("encode_format") == "png"
        if png and data.get("encode_quality") is None:
            return {**data, "encode_quality": DEFAULT_PNG_COMPRESSION}
        return data

    @model_validator(mode="after")
    def _quality_in_range(self) -> FetchOptions:
        q = self.encode_quality
        if self.encode_format == "png" and not 0 <= q <= 9:
            raise ValueError(
                "For png, encode quality represents compression which must be between 0 and 9,"
                f" got {q}"
            )
        if self.encode_format != "png" and not 0 <= q <= 100:
            raise ValueError(f"encode_quality must be between 0 and 100 for {self.encode_format}")
        return self
