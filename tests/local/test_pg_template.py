"""A new stage's data dir is a copy of the cached initdb template: each stage still gets its own hardened server,
and nothing of one stage (tables, passwords) reaches the template or the next stage."""

from __future__ import annotations

import json
import shutil
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
        templates = list((tmp_path / "cache" / "flux" / "pg-template").glob("[0-9a-f]" * 16))
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


def test_a_damaged_template_is_never_a_stage_s_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache cleaner deleted files of the template but left PG_VERSION: the next stage gets its own initdb and
    starts; the template is built again, whole, for the stage after it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert pg_template.seed(tmp_path / "first" / "pg") is True
    (template,) = (tmp_path / "cache" / "flux" / "pg-template").glob("[0-9a-f]" * 16)
    manifest = template.with_name(f"{template.name}.manifest")
    assert manifest.is_file()
    for victim in ("global/pg_control", "base/1/PG_VERSION"):
        (template / victim).unlink()
    assert (template / "PG_VERSION").is_file()

    server = EmbeddedPostgres(tmp_path / "stage" / "pg")
    try:
        with psycopg.connect(server.start(), autocommit=True, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert (server.pgdata / "global" / "pg_control").is_file()  # its own initdb, not the damaged copy
    finally:
        server.stop()
    assert not template.exists() and not manifest.exists()  # the damaged one is gone
    assert not (tmp_path / "stage" / ".pg.seed").exists()  # and so is the rejected copy

    assert pg_template.seed(tmp_path / "next" / "pg") is True  # built again, whole
    assert manifest.is_file() and (template / "global" / "pg_control").is_file()
    assert (tmp_path / "next" / "pg" / "global" / "pg_control").is_file()

    shutil.rmtree(template)  # the whole dir pruned, its manifest left behind: built again too
    assert pg_template.seed(tmp_path / "third" / "pg") is True and manifest.is_file()


def test_building_a_template_removes_those_of_postgresql_builds_that_are_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = tmp_path / "cache" / "flux" / "pg-template"
    base.mkdir(parents=True)
    planted = {"0" * 16: tmp_path / "deleted-venv" / "bin", "1" * 16: tmp_path}  # tmp_path exists
    for key, bin_dir in planted.items():
        (base / key).mkdir()
        (base / key / "PG_VERSION").write_text("16\n")
        (base / f"{key}.manifest").write_text(f"postgres\t{bin_dir}\n./\n./PG_VERSION\t3\n")
    (base / ("2" * 16)).mkdir()  # an older flux's template (no manifest): whose it is is unknown, so it stays
    assert pg_template.seed(tmp_path / "stage" / "pg") is True
    assert not (base / ("0" * 16)).exists() and not (base / f"{'0' * 16}.manifest").exists()
    assert (base / ("1" * 16)).is_dir() and (base / ("2" * 16)).is_dir()
    assert len(list(base.glob("*.manifest"))) == 2  # the kept one and the new one
