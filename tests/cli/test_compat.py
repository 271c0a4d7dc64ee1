"""img2dataset's flags for its own machinery: its command lines run unchanged, and a value this
tool cannot honour stops the download before anything is written, saying what to use instead.
(--output_format's layouts: tests/e2e/test_output_formats.py; --enable_wandb: test_wandb.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from i2d_cli.main import main


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        ("--output_format=tar", "one of webdataset, files, parquet, tfrecord, dummy"),
        ("--output_format=None", "one of webdataset, files, parquet, tfrecord, dummy"),
        ("--distributor=pyspark", "img2dataset serve fetcher|appender|materializer"),
    ],
)
def test_a_value_that_cannot_be_honoured_is_a_clear_error(
    flag: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/a.jpg\n")
    out = tmp_path / "out"
    rc = main([f"--url_list={tmp_path / 'urls.txt'}", f"--output_folder={out}", flag])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith(f"img2dataset: invalid option {flag.split('=')[0]}: ") and says in err
    assert not out.exists()
