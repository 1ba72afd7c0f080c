"""Hypothesis settings profiles for the property (fuzz) tests, chosen by ``HYPOTHESIS_PROFILE``.

``ci`` (the default) is bounded and reproducible: a fixed number of derandomized examples per
test and no example database, so every run explores the same inputs and writes nothing into
the checkout. ``long`` is for hunting: many random examples per test, with the database under
``.hypothesis/`` so a failure found once is replayed first next time::

    HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/unit/test_fuzz_requests.py \
        tests/unit/preprocess/test_fuzz_decode.py
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path

from hypothesis import configuration, settings

CI_EXAMPLES = 300
LONG_EXAMPLES = 20_000

settings.register_profile("ci", max_examples=CI_EXAMPLES, derandomize=True, database=None,
                          deadline=timedelta(seconds=2), print_blob=True)
settings.register_profile("long", max_examples=LONG_EXAMPLES, derandomize=False,
                          deadline=timedelta(seconds=2), print_blob=True)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
if PROFILE == "ci":
    # Without a database Hypothesis still caches the literals it mines from the code under
    # test in .hypothesis/constants; keep that cache out of the checkout too.
    configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "qvq-hypothesis-ci")
