"""Fixtures of the conformance suite (defined in conformance_lib.py, which the scenarios import by that unique
name: several test directories have a conftest.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conformance_lib import aws_pg, docker_host, moto_url, pytest_generate_tests, stage  # noqa: F401
