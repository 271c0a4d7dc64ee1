"""`img2dataset download` with the opt-outs on (the default), in worker processes against the
image server: rows refused by robots.txt, by the image's IPTC data-mining XMP and by
`X-Robots-Tag: noml` are failed samples with their reason, counted in the summary, the
index's error counts and /metrics; the refused urls are never requested; each worker reads
the site's robots.txt once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from i2d_cli.main import main
from i2d_imageserver import ImageServer
from i2d_segments.index.sqlite import SqliteIndex

ROBOTS_TXT = (
    "User-agent: *\nDisallow: /fault/\n\n"
    "User-agent: img2dataset\nAllow: /fault/\nDisallow: /img/9*\nCrawl-delay: 0.001\n"
)


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def robots_metrics() -> Counter[str]:
    out = Counter(
        {
            "hits": metric("img2dataset_fetcher_robots_cache_hits_total"),
            "misses": metric("img2dataset_fetcher_robots_cache_misses_total"),
            "refused": metric("img2dataset_fetcher_failures_total", {"reason": "robots_txt"}),
            "iptc": metric("img2dataset_fetcher_failures_total", {"reason": "iptc_data_mining"}),
        }
    )
    for result in ("ok", "unavailable", "unreachable", "timeout", "stale", "error"):
        out[f"fetch:{result}"] = metric(
            "img2dataset_fetcher_robots_fetches_total", {"result": result}
        )
    return out


def test_refused_rows_are_counted_by_reason_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ImageServer(robots_txt=ROBOTS_TXT) as images:
        ok = [images.url_for(8000 + n, 120, 90) for n in range(12)]
        refused = [images.url_for(9000 + n, 120, 90) for n in range(4)]  # /img/9...
        mining = [images.url_for(8100 + n, 120, 90, fault="datamining") for n in range(2)]
        allowed_mining = [images.url_for(8200, 120, 90, fault="datamining", value="DMI-ALLOWED")]
        noml = [images.url_for(8300, 120, 90, fault="robots", tag=["noml"])]
        urls = ok + refused + mining + allowed_mining + noml
        (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
        before = robots_metrics()
        rc = main(
            [
                "download",
                f"--url_list={tmp_path / 'urls.txt'}",
                f"--output_folder={tmp_path / 'out'}",
                "--processes_count=2",
                "--progress=False",
                "--allowed_networks=127.0.0.1/32",
            ]
        )
        delta = robots_metrics() - before
        assert rc == 0
        assert all(images.hits(u) == 0 for u in refused)  # never requested
        assert 1 <= images.robots_requests <= 2  # once per worker process
    index = SqliteIndex(tmp_path / "out" / "index.sqlite")
    try:
        errors = index.error_counts()
    finally:
        index.close()
    assert errors == {
        "disallowed by robots.txt": 4,
        "disallowed by IPTC data mining: DMI-PROHIBITED-AIMLTRAINING": 2,
        "Use of image disallowed by X-Robots-Tag directive": 1,
    }
    summary = capsys.readouterr().out
    assert "4  disallowed by robots.txt" in summary
    assert "2  disallowed by IPTC data mining: DMI-PROHIBITED-AIMLTRAINING" in summary
    assert delta["refused"] == 4 and delta["iptc"] == 2
    assert delta["hits"] + delta["misses"] == len(urls)
    assert delta["misses"] >= 1 and 1 <= delta["fetch:ok"] <= 2
    assert delta["fetch:ok"] == sum(v for k, v in delta.items() if k.startswith("fetch:"))
