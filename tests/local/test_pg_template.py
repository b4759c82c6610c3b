"""A new stage's data dir is a copy of the cached initdb template: each stage still gets its own hardened server,
and nothing of one stage (tables, passwords) reaches the template or the next stage."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from flux_local import pg_template
from flux_local.pg import HBA, EmbeddedPostgres


def test_stages_seeded_from_the_template_are_separate_and_hardened(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    a, b = EmbeddedPostgres(tmp_path / "a" / "pg"), EmbeddedPostgres(tmp_path / "b" / "pg")
    try:
        uri_a = a.start()
        templates = list((tmp_path / "cache" / "flux" / "pg-template").glob("[0-9a-f]*"))
        assert len(templates) == 1 and (templates[0] / "PG_VERSION").is_file()
        assert not (templates[0] / "postmaster.pid").exists()  # a template is never a running server
        before = _snapshot(templates[0])
        with psycopg.connect(uri_a, autocommit=True) as conn:
            conn.execute("CREATE TABLE only_in_a (id int)")
        uri_b = b.start()
        assert uri_a != uri_b  # own socket, own passwords
        with psycopg.connect(uri_b, autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('public.only_in_a')").fetchone() == (None,)
        for server in (a, b):  # hardened as a fresh initdb's server is: scram only, no trust left
            assert (server.pgdata / "pg_hba.conf").read_text() == HBA
            auth = json.loads(server.auth_file.read_text())
            trust = server.uri.replace(f":{auth['owner']}@", ":@")  # type: ignore[union-attr]
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(trust, connect_timeout=5).close()
        assert _snapshot(templates[0]) == before  # stage A's writes and B's seeding left the template as it was
        assert json.loads(a.auth_file.read_text()) != json.loads(b.auth_file.read_text())
    finally:
        a.stop()
        b.stop()


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_an_existing_data_dir_is_never_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pgdata = tmp_path / "pg"
    pgdata.mkdir()
    (pgdata / "mine").write_text("kept\n")
    assert pg_template.seed(pgdata) is False
    assert [p.name for p in pgdata.iterdir()] == ["mine"]
    assert not (tmp_path / "cache").exists()  # nothing built for it either
