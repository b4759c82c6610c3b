"""The encrypted secret store: CLI set/list/unset/import, key handling, fingerprints, masking, and
no secret value in any file but secrets.enc."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from flux_plan.errors import FluxError
from flux_plan.secrets import SecretStore

FluxRunner = Callable[..., tuple[int, str, str]]

VALUE_A = "sk-live-7f3a9c1e5b"
VALUE_B = "hunter2-rotated-Q9"


def _files_containing(root: Path, needle: str) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and needle.encode() in p.read_bytes():
            hits.append(str(p.relative_to(root)))
    return hits


def test_cli_set_list_unset_import(tmp_path: Path, flux: FluxRunner, flux_env: dict[str, str],
                                   make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_project(tmp_path)
    rc, out, err = flux("secrets", "set", f"API_KEY={VALUE_A}", "REGION=eu-west-1", cwd=root)
    assert rc == 0, err
    assert VALUE_A not in out + err
    key_file = Path(flux_env["XDG_CONFIG_HOME"]) / "flux" / "keys" / "proj.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_bytes().strip())) == 32

    rc, out, _ = flux("secrets", "list", "--json", cwd=root)
    doc = json.loads(out)
    assert [s["key"] for s in doc["secrets"]] == ["API_KEY", "REGION"]
    fp1 = doc["secrets"][0]["fingerprint"]
    assert len(fp1) == 64 and VALUE_A not in out and "eu-west-1" not in out

    # Rotation changes the fingerprint; the same value gives the same fingerprint.
    flux("secrets", "set", f"API_KEY={VALUE_B}", cwd=root)
    fp2 = json.loads(flux("secrets", "list", "--json", cwd=root)[1])["secrets"][0]["fingerprint"]
    flux("secrets", "set", f"API_KEY={VALUE_A}", cwd=root)
    fp3 = json.loads(flux("secrets", "list", "--json", cwd=root)[1])["secrets"][0]["fingerprint"]
    assert fp2 != fp1 and fp3 == fp1

    env_file = tmp_path / "prod.env"
    env_file.write_text('# comment\nexport DB_PASSWORD="p@ss w0rd#1"\nEMPTY=\nTOKEN=abc123 # trailing\n')
    rc, out, err = flux("secrets", "import", str(env_file), cwd=root)
    assert rc == 0 and "3 key(s)" in out, err
    monkeypatch.setenv("XDG_CONFIG_HOME", flux_env["XDG_CONFIG_HOME"])
    monkeypatch.delenv("FLUX_SECRETS_KEY", raising=False)
    store = SecretStore(root, "proj", "dev")
    assert store.get("DB_PASSWORD") == "p@ss w0rd#1" and store.get("TOKEN") == "abc123"
    assert store.get("EMPTY") == ""

    rc, _, _ = flux("secrets", "unset", "REGION", cwd=root)
    assert rc == 0
    rc, out, _ = flux("secrets", "list", cwd=root)
    assert "REGION" not in out and "API_KEY" in out
    rc, _, err = flux("secrets", "unset", "REGION", cwd=root)
    assert rc == 1 and "not set" in err and "Traceback" not in err

    bad = tmp_path / "bad.env"
    bad.write_text("GOOD=1\nthis line is wrong\n")
    rc, _, err = flux("secrets", "import", str(bad), cwd=root)
    assert rc == 1 and f"{bad}:2" in err
    rc, _, err = flux("secrets", "set", "1BAD=x", cwd=root)
    assert rc == 1 and "not a valid key" in err

    # The values live only in secrets.enc (encrypted): nowhere else in the project or its .flux/.
    for value in (VALUE_A, VALUE_B, "p@ss w0rd#1", "eu-west-1"):
        assert _files_containing(root, value) == []
    assert (root / ".flux" / "dev" / "secrets.enc").exists()


def test_values_never_reach_state_plan_or_journal(tmp_path: Path, flux: FluxRunner,
                                                  make_project: Callable[..., Path]) -> None:
    code = ('import { defineFunction } from "@flux/functions";\nexport default defineFunction({ name: "hello",\n'
            '  handler: async ({ ctx }) => ({ k: await ctx.secrets.get("API_KEY"), r: ctx.env.REGION }) });\n')
    root = make_project(tmp_path, functions={"hello": {"code": code}}, env_example="API_KEY=\nREGION=\n")
    assert flux("secrets", "set", f"API_KEY={VALUE_A}", "REGION=eu-central-9", cwd=root)[0] == 0
    rc, out, err = flux("apply", "--auto-approve", cwd=root)
    assert rc == 0, out + err
    rc, plan_out, err = flux("plan", "--json", cwd=root)
    assert rc == 0, err
    state = json.loads((root / ".flux" / "dev" / "state.json").read_text())
    assert "secret.API_KEY" in state["resources"]
    fp = state["resources"]["secret.API_KEY"]["attributes"]["fingerprint"]
    # Rotating shows up as a change of the fingerprint only.
    flux("secrets", "set", f"API_KEY={VALUE_B}", cwd=root)
    rc, plan_out2, _ = flux("plan", "--json", cwd=root)
    changed = {c["address"]: c for c in json.loads(plan_out2)["changes"]}
    assert changed["secret.API_KEY"]["action"] == "update"
    assert fp in plan_out2
    rc, out2, err2 = flux("apply", "--auto-approve", "--json", cwd=root)
    assert rc == 0, err2
    for value in (VALUE_A, VALUE_B, "eu-central-9"):
        assert value not in out + err + plan_out + plan_out2 + out2 + err2
        assert _files_containing(root, value) == []


def test_store_api_keys_and_masking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("FLUX_SECRETS_KEY", raising=False)
    store = SecretStore(tmp_path / "p", "demo", "dev")
    assert store.keys() == [] and not store.has("X")
    with pytest.raises(FluxError) as info:
        store.get("OPENAI_API_KEY")
    assert "OPENAI_API_KEY" in info.value.render() and "flux secrets set OPENAI_API_KEY=" in info.value.render()
    store.set({"OPENAI_API_KEY": VALUE_A, "PIN": "123", "NAME": "demo-app"})
    assert store.get("OPENAI_API_KEY") == VALUE_A and store.keys() == ["NAME", "OPENAI_API_KEY", "PIN"]
    masked = store.mask(f"calling with {VALUE_A} as demo-app, pin 123")
    assert masked == "calling with ******** as ********, pin 123"  # values under 4 chars are left alone

    # Another stage has its own file; another project its own key (a different fingerprint).
    other = SecretStore(tmp_path / "q", "other", "dev")
    other.set({"OPENAI_API_KEY": VALUE_A})
    assert other.fingerprint("OPENAI_API_KEY") != store.fingerprint("OPENAI_API_KEY")
    assert (tmp_path / "cfg" / "flux" / "keys" / "other.key").exists()

    # A CI key in the environment: a store written with it cannot be read with another key.
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("FLUX_SECRETS_KEY", key)
    ci = SecretStore(tmp_path / "ci", "demo", "prod")
    ci.set({"TOKEN": "t0k3n-value"})
    assert SecretStore(tmp_path / "ci", "demo", "prod").get("TOKEN") == "t0k3n-value"
    monkeypatch.setenv("FLUX_SECRETS_KEY", base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(FluxError, match="cannot decrypt"):
        SecretStore(tmp_path / "ci", "demo", "prod").get("TOKEN")
    monkeypatch.setenv("FLUX_SECRETS_KEY", "not-base64!")
    with pytest.raises(FluxError, match="FLUX_SECRETS_KEY"):
        SecretStore(tmp_path / "ci", "demo", "prod").keys()
    monkeypatch.delenv("FLUX_SECRETS_KEY")
    # The key file of a store is gone: a clear error naming the key path, not a crash.
    (tmp_path / "cfg" / "flux" / "keys" / "demo.key").unlink()
    with pytest.raises(FluxError, match="key is missing"):
        SecretStore(tmp_path / "p", "demo", "dev").keys()


PLAIN_CODE = """import { defineFunction } from "@flux/functions";
export default defineFunction({ name: "hello", handler: async ({ ctx }) => ({ g: ctx.env.GREETING, m: ctx.env.MODE }) });
"""


def test_plain_env_and_a_secret_of_the_same_name(tmp_path: Path, flux: FluxRunner, make_project: Callable[..., Path]) -> None:
    """flux.json `env` is plain configuration: a key it gives is not "unset" (no warning), a key both in `env` and
    in `secrets` is refused at validate with its line, and a stage secret of the same name is said to win."""
    root = make_project(tmp_path, {"hello": {"flux": {"name": "hello", "env": {"GREETING": "hi", "MODE": "m"}},
                                             "code": PLAIN_CODE}}, env_example="MODE=\n")
    rc, out, err = flux("validate", cwd=root)
    assert rc == 0 and "0 warning(s)" in out, out + err
    rc, out, err = flux("plan", cwd=root)
    assert rc == 0 and "Warning" not in out + err, out + err

    assert flux("secrets", "set", f"MODE={VALUE_A}", cwd=root)[0] == 0
    rc, out, err = flux("plan", cwd=root)
    assert rc == 0, out + err
    assert ("functions/hello/flux.json ($.env.MODE): stage 'dev' has a secret 'MODE' too, and ctx.env gets the "
            "secret's value (to use the plain value, `flux secrets unset MODE`)") in out + err
    assert "$.env.GREETING" not in out + err  # no secret of that name: nothing to say
    assert VALUE_A not in out + err

    cfg = root / "functions" / "hello" / "flux.json"
    cfg.write_text(json.dumps({"name": "hello", "env": {"GREETING": "hi", "MODE": "m"}, "secrets": ["MODE"]}, indent=2))
    for cmd in (["validate"], ["plan"], ["apply", "--auto-approve"]):
        rc, out, err = flux(*cmd, cwd=root)
        assert rc == 1, (cmd, out, err)
        assert ("functions/hello/flux.json:5 ($.env.MODE): error: 'MODE' is both a plain value in \"env\" and listed "
                "in \"secrets\"") in out + err, (cmd, out, err)
        assert "Traceback" not in out + err
    assert not (root / ".flux" / "dev" / "state.json").exists()  # nothing was applied
