"""Sealing saved plans: an HMAC-SHA256 over the whole plan document, keyed per project.

The key is never in the project tree, so a person who edits a plan file cannot recompute the seal:
`FLUX_PLAN_KEY` (base64 of 32 bytes) when set, else a key derived (HKDF) from the project's secrets
key (`FLUX_SECRETS_KEY` or `~/.config/flux/keys/<project>.key`), so a pipeline needs one CI secret.
The seal also carries a key id (an HMAC of a constant), which tells "edited" from "sealed elsewhere"
without revealing anything about the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from flux_plan.errors import FluxError

PLAN_KEY_ENV = "FLUX_PLAN_KEY"
ALG = "HMAC-SHA256"
SEAL_FIELD = "seal"
_PURPOSE = "plan-seal"


def _env_key(project: str) -> bytes | None:
    raw = os.environ.get(PLAN_KEY_ENV)
    if not raw:
        return None
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise FluxError(f"${PLAN_KEY_ENV} is not the base64 of 32 bytes",
                        hint='create one with: python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"')
    return hmac.new(key, f"flux/{_PURPOSE}/{project}".encode(), hashlib.sha256).digest()


def plan_key(project: str, *, create: bool) -> bytes:
    """The sealing key of `project` (created with the project key when `create` and none exists)."""
    key = _env_key(project)
    if key is not None:
        return key
    from flux_plan.secrets import SecretStore

    store = SecretStore(Path("."), project, "dev")  # only the project key is used, not the stage files
    try:
        return store.derive_key(_PURPOSE, create=create)
    except FluxError as exc:
        raise FluxError(
            f"cannot verify the saved plan: no plan key for project {project!r} ({exc.message})",
            hint=f"set ${PLAN_KEY_ENV} (or $FLUX_SECRETS_KEY) to the key the plan was made with",
        ) from exc


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes the seal covers: every field but the seal, in one canonical JSON form."""
    body = {k: v for k, v in doc.items() if k != SEAL_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(key: bytes) -> str:
    return hmac.new(key, b"flux plan key id", hashlib.sha256).hexdigest()[:16]


def seal(doc: dict[str, Any], key: bytes) -> dict[str, Any]:
    """`doc` with its seal added."""
    mac = hmac.new(key, canonical(doc), hashlib.sha256).hexdigest()
    return {**doc, SEAL_FIELD: {"alg": ALG, "key_id": key_id(key), "mac": mac}}


def verify(doc: dict[str, Any], key: bytes, where: str, action: str = "apply") -> None:
    """Raise one clear FluxError unless `doc` carries a seal made with `key` over exactly this content."""
    redo = f"make a new plan with `flux plan -o {Path(where).name}` and review it"
    s = doc.get(SEAL_FIELD)
    if not isinstance(s, dict) or not isinstance(s.get("mac"), str):
        raise FluxError(f"{where}: refusing to {action} it: the plan file is not sealed, so nothing shows it is "
                        "the plan that was reviewed. Nothing was changed.", hint=redo)
    if s.get("alg") != ALG:
        raise FluxError(f"{where}: refusing to {action} it: unknown seal algorithm {s.get('alg')!r}. "
                        "Nothing was changed.", hint=redo)
    if s.get("key_id") != key_id(key):
        raise FluxError(
            f"{where}: refusing to {action} it: the plan was sealed with another key (another project, or another "
            f"machine's key: ${PLAN_KEY_ENV}/$FLUX_SECRETS_KEY or ~/.config/flux/keys/). Nothing was changed.",
            hint=f"apply it where the project's key is available, or {redo}")
    mac = hmac.new(key, canonical(doc), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, s["mac"]):
        raise FluxError(f"{where}: refusing to {action} it: the plan file was changed after it was sealed (its seal "
                        "does not match its content). Nothing was changed.", hint=redo)
