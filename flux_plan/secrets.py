"""The encrypted secret store of a stage: `.flux/<stage>/secrets.enc` (AES-256-GCM).

The key never lives in the project tree: `FLUX_SECRETS_KEY` (base64 of 32 bytes, for CI) or
`$XDG_CONFIG_HOME/flux/keys/<project>.key` (default `~/.config/flux/keys/`), created 0600 on the first
`set`. Two keys are derived from it with HKDF: one encrypts, one fingerprints. The fingerprint
(HMAC-SHA256) is what state and plans record, so a rotation shows up in a plan without the value
ever being written anywhere but `secrets.enc`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from flux_plan.backends.local import atomic_write
from flux_plan.errors import FluxError
from flux_plan.filelocks import file_lock
from flux_plan.paths import stage_dir

KEY_ENV = "FLUX_SECRETS_KEY"
SECRETS_FILE = "secrets.enc"
FORMAT = 1
KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MIN_MASK_LEN = 4
_ESCAPE_RE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def keys_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path(os.environ.get("HOME") or Path.home()) / ".config")
    return Path(base) / "flux" / "keys"


def _safe_name(project_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", project_name) or "project"


def check_key_name(key: str, where: str = "secret name") -> str:
    if not KEY_RE.match(key):
        raise FluxError(
            f"{where}: {key!r} is not a valid key",
            hint="use letters, digits and underscores, not starting with a digit (e.g. API_KEY)",
        )
    return key


def parse_dotenv(path: Path) -> dict[str, str]:
    """A `.env` file: `KEY=VALUE` lines, `export KEY=...`, `#` comments, single/double quotes."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FluxError(f"{path}: cannot read ({exc.strerror})", hint="check the path") from exc
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            raise FluxError(f"{path}:{n}: expected KEY=VALUE", hint="or comment the line out with #")
        check_key_name(key, f"{path}:{n}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), value)
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key] = value
    return out


MASK = "********"


_JSON_ESCAPED = re.compile(r'["\\\x00-\x1f\ud800-\udfff]')


class Masker:
    """Replaces every known secret value in log records; values are swapped atomically on rotation.

    Configuration set with `flux secrets set` is masked too, and values such as APP_NAME=todo are
    ordinary words: a short value (< LONG chars) is masked only as a whole word (not inside
    `todos` or `create_todo`), a long one wherever it appears. Structural fields (function, stage,
    request id, level, ts) are never rewritten: they come from the project, not from values."""

    LONG = 12
    STRUCTURAL = frozenset({"ts", "level", "stage", "function", "request_id"})

    def __init__(self) -> None:
        self._pattern: re.Pattern[str] | None = None
        # (any value as plain text, without word boundaries; True when a value holds a character JSON escapes)
        self._anywhere: tuple[re.Pattern[str] | None, bool] = (None, False)

    def set_values(self, values: Any) -> None:
        # Longest first so a value containing another is masked whole; values under 4 characters would
        # mask ordinary words and are left alone (they are not secrets anybody can keep anyway).
        vals = sorted({v for v in values if isinstance(v, str) and len(v) >= MIN_MASK_LEN}, key=len, reverse=True)
        parts = [re.escape(v) if len(v) >= self.LONG else rf"(?<!\w){re.escape(v)}(?!\w)" for v in vals]
        self._anywhere = (re.compile("|".join(map(re.escape, vals))) if vals else None,
                          any(_JSON_ESCAPED.search(v) for v in vals))
        self._pattern = re.compile("|".join(parts)) if parts else None

    def may_hold(self, json_text: str) -> bool:
        """False when no value can be in any string of this JSON text (JSON.stringify's output: it escapes only
        quotes, backslashes, control characters and lone surrogates), so the text needs no masking as it is: a
        value with none of those characters appears verbatim in the text of a string that contains it. Lets the
        log store keep the host's access records as they came, without parsing each one."""
        anywhere, escaped = self._anywhere
        return escaped or (anywhere is not None and anywhere.search(json_text) is not None)

    def __call__(self, text: str) -> str:
        pattern = self._pattern
        return pattern.sub(MASK, text) if pattern else text

    def record(self, rec: dict[str, Any]) -> dict[str, Any]:
        """A copy of `rec` with every string (and dict key) outside the structural fields masked."""
        if self._pattern is None:
            return rec
        return {k: (v if k in self.STRUCTURAL else self._deep(v)) for k, v in rec.items()}

    def _deep(self, value: Any) -> Any:
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(str(k)): self._deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._deep(v) for v in value]
        return value


class SecretStore:
    """Secrets of one stage. Thread-safe; decrypts once and caches until the file changes."""

    def __init__(self, project_root: Path, project_name: str, stage: str) -> None:
        self.project_name = project_name
        self.stage = stage
        self.dir = stage_dir(project_root, stage)
        self.path = self.dir / SECRETS_FILE
        self.key_path = keys_dir() / f"{_safe_name(project_name)}.key"
        self._mu = threading.Lock()
        self._cache: tuple[tuple[int, int] | None, dict[str, str]] | None = None
        self._master: bytes | None = None
        self._derived: dict[str, bytes] = {}

    # -- keys -------------------------------------------------------------------------------------

    def key_source(self) -> str:
        return f"${KEY_ENV}" if os.environ.get(KEY_ENV) else str(self.key_path)

    def _load_master(self, *, create: bool) -> bytes | None:
        if self._master is not None:
            return self._master
        env = os.environ.get(KEY_ENV)
        if env:
            try:
                key = base64.b64decode(env, validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != 32:
                raise FluxError(
                    f"${KEY_ENV} is not the base64 of 32 bytes",
                    hint='create one with: python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"',
                )
            self._master = key
            return key
        try:
            key = base64.b64decode(self.key_path.read_bytes().strip(), validate=True)
        except FileNotFoundError:
            if not create:
                return None
            key = os.urandom(32)
            self.key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, base64.b64encode(key) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        except (binascii.Error, ValueError) as exc:
            raise FluxError(f"{self.key_path}: not a valid flux secrets key", hint="restore it from a backup") from exc
        if len(key) != 32:
            raise FluxError(f"{self.key_path}: not a 32-byte key", hint="restore it from a backup")
        self._master = key
        return key

    def _derive(self, purpose: str) -> bytes:
        if purpose in self._derived:
            return self._derived[purpose]
        master = self._load_master(create=False)
        if master is None:
            raise FluxError(f"no secrets key for project {self.project_name!r} ({self.key_path})")
        from cryptography.hazmat.primitives import hashes  # cryptography loads only where keys are used
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=f"flux/{purpose}/{self.project_name}".encode()
        ).derive(master)
        self._derived[purpose] = key
        return key

    def derive_key(self, purpose: str, *, create: bool = False) -> bytes:
        """A 32-byte key for `purpose` derived from the project key (created first when `create`): one
        secret for CI to hold, independent keys for independent uses (e.g. sealing saved plans)."""
        self._load_master(create=create)
        return self._derive(purpose)

    def _aad(self) -> bytes:
        return f"flux-secrets/{self.project_name}/{self.stage}/v{FORMAT}".encode()

    # -- file -------------------------------------------------------------------------------------

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _values(self) -> dict[str, str]:
        with self._mu:
            stamp = self._stamp()
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
            values = self._decrypt() if stamp is not None else {}
            self._cache = (stamp, values)
            return values

    def _decrypt(self) -> dict[str, str]:
        try:
            doc = json.loads(self.path.read_bytes())
            nonce = base64.b64decode(doc["nonce"])
            blob = base64.b64decode(doc["ciphertext"])
        except (ValueError, KeyError, TypeError) as exc:
            raise FluxError(f"{self.path}: not a flux secrets file", hint="restore it or delete it and set the secrets again") from exc
        if doc.get("format") != FORMAT:
            raise FluxError(f"{self.path}: unknown secrets format {doc.get('format')!r}")
        if self._load_master(create=False) is None:
            raise FluxError(
                f"{self.path}: encrypted secrets exist but the key is missing ({self.key_path})",
                hint=f"restore the key file, or set ${KEY_ENV}",
            )
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            plain = AESGCM(self._derive("encrypt")).decrypt(nonce, blob, self._aad())
        except InvalidTag as exc:
            raise FluxError(
                f"{self.path}: cannot decrypt with the key from {self.key_source()} (wrong key or damaged file)",
                hint=f"use the key these secrets were set with (file {self.key_path} or ${KEY_ENV})",
            ) from exc
        values = json.loads(plain)
        return {str(k): str(v) for k, v in values.items()}

    def _write(self, values: dict[str, str]) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._load_master(create=True)
        nonce = os.urandom(12)
        plain = json.dumps(values, sort_keys=True).encode()
        blob = AESGCM(self._derive("encrypt")).encrypt(nonce, plain, self._aad())
        doc = {
            "format": FORMAT,
            "project": self.project_name,
            "stage": self.stage,
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(blob).decode(),
        }
        atomic_write(self.path, json.dumps(doc, indent=1).encode() + b"\n", mode=0o600)
        with self._mu:
            self._cache = (self._stamp(), dict(values))

    def _modify(self, change: dict[str, str | None]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.dir / "secrets.lock", timeout=30):
            with self._mu:
                self._cache = None  # re-read under the lock: another process may have written
            values = dict(self._values())
            for k, v in change.items():
                if v is None:
                    values.pop(k, None)
                else:
                    values[k] = v
            self._write(values)

    # -- API --------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return sorted(self._values())

    def has(self, key: str) -> bool:
        return key in self._values()

    def get(self, key: str) -> str:
        values = self._values()
        if key not in values:
            raise FluxError(
                f"secret {key!r} is not set for stage {self.stage!r} ({self.path})",
                hint=f"run `flux secrets set {key}=...`" + (f" --stage {self.stage}" if self.stage != "dev" else ""),
            )
        return values[key]

    def set(self, values: dict[str, str]) -> None:
        for k in values:
            check_key_name(k)
        self._modify(dict(values))

    def unset(self, key: str) -> bool:
        """Remove `key`; False when it was not set."""
        if key not in self._values():
            return False
        self._modify({key: None})
        return True

    def import_file(self, path: Path) -> list[str]:
        """Set every KEY=VALUE of a .env file; returns the keys set."""
        values = parse_dotenv(path)
        if values:
            self.set(values)
        return sorted(values)

    def fingerprint(self, key: str) -> str:
        """HMAC-SHA256 of the value under a per-project key: comparable, not reversible."""
        value = self.get(key)
        return hmac.new(self._derive("fingerprint"), value.encode(), hashlib.sha256).hexdigest()

    def fingerprint_value(self, value: str) -> str:
        """The same HMAC for a value from outside the store (the stage's database URL), so it can be
        diffed without being kept anywhere. Creates the project key if there is none yet."""
        self._load_master(create=True)
        return hmac.new(self._derive("fingerprint"), value.encode(), hashlib.sha256).hexdigest()

    def mask(self, text: str) -> str:
        """Replace every known value in `text` with the mask (rules in `Masker`). Never raises."""
        try:
            values = self._values()
        except FluxError:
            return text
        masker = Masker()
        masker.set_values(values.values())
        return masker(text)
