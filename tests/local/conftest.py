"""Fixtures of the local provider's tests: one embedded PostgreSQL per xdist worker, tmp copies of
examples/todo, real `.venv/bin/flux` subprocesses, and a teardown that stops every daemon by PID."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from local_lib import Project, _stop_everything, new_todo


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real embedded PostgreSQL for this xdist worker (its superuser URI: tests create databases); stopped at
    the end of the session."""
    from flux_local.pg import EmbeddedPostgres

    base = tmp_path_factory.mktemp("pg")
    server = EmbeddedPostgres(base / "data")
    try:
        server.start()
        assert server.admin_uri is not None
        yield server.admin_uri
    finally:
        server.stop()


@pytest.fixture
def db(pg_server: str) -> Iterator[psycopg.Connection[Any]]:
    """A fresh database on the shared server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    uri = pg_server.replace("/postgres?", f"/{name}?")
    conn = psycopg.connect(uri, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def todo(tmp_path: Path) -> Iterator[Project]:
    project = new_todo(tmp_path)
    try:
        yield project
    finally:
        _stop_everything(project.root)
