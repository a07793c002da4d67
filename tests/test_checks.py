"""tfhier.checks: the integer checks the library's entry points share."""

import numpy as np
import pytest

from tfhier.checks import integer_at_least


def test_integer_at_least_accepts_integers_and_names_what_it_refuses():
    assert integer_at_least("--iw_samples", 64) == 64
    assert integer_at_least("--max_sequences", 0, minimum=0) == 0
    assert type(integer_at_least("num_steps", np.int32(7))) is int
    for bad in (0, -3, True, 2.0, "4", None):
        with pytest.raises(ValueError, match=r"^num_steps must be an integer >= 1, got "):
            integer_at_least("num_steps", bad)


def test_integer_at_least_raises_the_callers_error_class():
    class ExportError(ValueError):
        pass

    with pytest.raises(ExportError, match="--version must be an integer >= 1, got 0"):
        integer_at_least("--version", 0, error=ExportError)
