"""img2dataset's flag forms: flat `--flag=value`, Python literals, and the `download` default."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from i2d_cli.enqueue import EnqueueSettings
from i2d_cli.flags import model_kwargs, parse_value
from i2d_cli.main import build_parser, main, normalize_argv
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


def test_bare_words_in_literals_are_strings_as_in_python_fire() -> None:
    assert parse_value("[noai,noindex]") == ["noai", "noindex"]
    assert parse_value("[hash_col, sha256]") == ["hash_col", "sha256"]
    assert parse_value("[license]") == ["license"]
    assert parse_value("http://127.0.0.1/a.jpg") == "http://127.0.0.1/a.jpg"
    assert parse_value("a.b") == "a.b"


def test_img2dataset_option_flags_reach_the_fetch_options() -> None:
    args = normalize_argv(
        [
            "--url_list=u.parquet",
            "--verify_hash",
            '["sha256","sha256"]',
            "--disallowed_header_directives",
            "[]",
            "--compute_hash=None",
            "--bbox_col=faces",
            "--skip_reencode",
            "--disable_all_reencoding=False",
            "--allowed_image_formats=[jpg,png]",
            "--save_additional_columns=[license,nsfw]",
        ]
    )
    ns = build_parser().parse_args(args)
    opts = DownloadOptions(**model_kwargs(ns, DownloadOptions))
    fetch = FetcherSettings(**model_kwargs(ns, FetcherSettings)).fetch_options()
    assert fetch.verify_hash == ("sha256", "sha256")
    assert fetch.disallowed_header_directives == ()
    assert fetch.compute_hash is None
    assert fetch.bbox_col == "faces"
    assert (fetch.skip_reencode, fetch.disable_all_reencoding) == (True, False)
    assert fetch.allowed_image_formats == ("jpeg", "png")
    assert opts.save_additional_columns == ["license", "nsfw"]
    assert DownloadOptions(
        url_list="u", save_additional_columns="a, b"
    ).save_additional_columns == [
        "a",
        "b",
    ]


def test_every_fetch_option_is_a_download_flag() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    download = sub.choices["download"]  # type: ignore[attr-defined]
    flags = {a.dest for a in download._actions}
    img2dataset_names = {
        "url_list", "output_folder", "input_format", "url_col", "caption_col", "bbox_col",
        "save_additional_columns", "image_size", "resize_mode", "resize_only_if_bigger",
        "upscale_interpolation", "downscale_interpolation", "encode_format", "encode_quality",
        "skip_reencode", "disable_all_reencoding", "min_image_size", "max_image_area",
        "max_aspect_ratio", "timeout", "retries", "user_agent_token",
        "disallowed_header_directives", "ignore_ssl_certificate", "compute_hash", "verify_hash",
        "extract_exif", "thread_count", "processes_count", "number_sample_per_shard",
        "incremental_mode",
    }  # fmt: skip
    assert img2dataset_names <= flags


def test_noflag_turns_a_boolean_off_as_in_python_fire() -> None:
    args = normalize_argv(
        ["--url_list=u.txt", "--noresize_only_if_bigger", "--noextract_exif", "--noprogress"]
    )
    ns = build_parser().parse_args(args)
    fetch = FetcherSettings(**model_kwargs(ns, FetcherSettings)).fetch_options()
    assert fetch.resize_only_if_bigger is False and fetch.extract_exif is False
    assert DownloadOptions(**model_kwargs(ns, DownloadOptions)).progress is False
    on = build_parser().parse_args(normalize_argv(["--url_list=u.txt", "--resize_only_if_bigger"]))
    assert (
        FetcherSettings(**model_kwargs(on, FetcherSettings)).fetch_options().resize_only_if_bigger
    )
    # only booleans get the no-form: `--noimage_size` is an unknown flag, not image_size=False
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(normalize_argv(["--url_list=u.txt", "--noimage_size"]))
    assert exited.value.code == 2


def test_help_shows_every_default_and_marks_required_flags() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {name: " ".join(p.format_help().split()) for name, p in sub.choices.items()}  # type: ignore[attr-defined]
    assert not [name for name, text in helps.items() if "Undefined" in text]
    assert "A url file, or a folder of them. (required)" in helps["download"]
    assert "(default: 256)" in helps["download"]  # image_size
    assert "(default: ['success'])" in helps["materialize"]  # a default_factory's value


def test_additional_columns_cannot_overwrite_metadata_columns() -> None:
    # img2dataset refuses them too: the row's own status or width would be replaced
    for reserved in ("status", "width", "sha256", "key", "sample_id"):
        with pytest.raises(ValidationError, match=f"'{reserved}'.* cannot be additional columns"):
            DownloadOptions(url_list="u", save_additional_columns=["license", reserved])
    with pytest.raises(ValidationError, match="cannot be additional columns"):
        EnqueueSettings(url_list="u", save_additional_columns="caption")


def test_a_command_offers_only_the_flags_it_uses(capsys: pytest.CaptureFixture[str]) -> None:
    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        return capsys.readouterr().out

    status = help_of("serve", "status")
    assert "--http_port" in status and "--metrics_port" not in status
    assert "--create_topics" not in status
    enqueue = help_of("enqueue")
    assert "--urls_topic" in enqueue
    assert "--store_url" not in enqueue and "--index_url" in enqueue  # shards, known rows
    appender = help_of("serve", "appender")
    assert "--owner" in appender and "This instance's identity. (default" not in appender
