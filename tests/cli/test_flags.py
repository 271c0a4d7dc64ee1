"""img2dataset's flag forms: flat `--flag=value`, Python literals, and the `download` default."""

from __future__ import annotations

from i2d_cli.flags import model_kwargs, parse_value
from i2d_cli.main import build_parser, normalize_argv
from i2d_cli.options import DownloadOptions
from i2d_fetcher.settings import FetcherSettings


def test_flat_form_means_download() -> None:
    assert normalize_argv(["--url_list=u.txt", "--output_folder=o"])[0] == "download"
    assert normalize_argv(["download", "--url_list", "u.txt"])[0] == "download"
    assert normalize_argv(["serve", "fetcher"])[0] == "serve"


def test_values_parse_like_python_fire() -> None:
    assert parse_value("[]") == []
    assert parse_value("['noai']") == ["noai"]
    assert parse_value("256") == 256
    assert parse_value("None") is None
    assert parse_value("inf") == float("inf")
    assert parse_value("border") == "border"


def test_download_flags_reach_the_settings() -> None:
    args = normalize_argv(
        [
            "--url_list=u.txt",
            "--output_folder=o",
            "--image_size=128",
            "--number_sample_per_shard",
            "50",
            "--caption_col=None",
            "--thread_count=8",
        ]
    )
    ns = build_parser().parse_args(args)
    opts = DownloadOptions(**model_kwargs(ns, DownloadOptions))
    fetcher = FetcherSettings(**model_kwargs(ns, FetcherSettings))
    assert (opts.url_list, opts.output_folder, opts.number_sample_per_shard) == ("u.txt", "o", 50)
    assert opts.caption_col is None
    assert fetcher.image_size == 128 and fetcher.thread_count == 8
    assert fetcher.fetch_options().image_size == 128
