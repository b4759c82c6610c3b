"""Fixtures of the docker provider tests (defined in docker_box.py, imported by that unique name)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from docker_box import box, docker_host  # noqa: F401
