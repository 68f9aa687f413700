"""Tests of beam_jobs.cli, the command-line helpers every job shares."""
from __future__ import annotations

import pytest

from beam_jobs import cli
from beam_jobs import label_and_balance  # noqa: F401 - registers its flags (--input) with Beam


def test_a_glob_the_shell_expanded_is_refused_not_cut_to_its_first_file():
    # `--input data/a-*` unquoted reaches the job as `--input data/a-1 data/a-2`; Beam drops
    # the extra words with a log line and the job would read data/a-1 only.
    with pytest.raises(ValueError, match=r"unexpected arguments: data/a-2 data/a-3; .* quote "
                       r"it: --input="):
        cli.pipeline_options(["--input", "data/a-1", "data/a-2", "data/a-3",
                              "--output_dir=out"])
    options = cli.pipeline_options(["--input", "data/a-1", "--runner", "DirectRunner"])
    assert options.get_all_options()["input"] == "data/a-1"  # a flag's spaced value is fine
