"""The conformance scenarios, in order, against one deployment per provider (fixture `stage`, conftest.py).

One test per provider walks every scenario as a subtest (they share the deployment, so they must run in order on
one worker; pytest-xdist's xdist_group is not honoured with pytest 9). Each scenario's outcome is also written to
$FLUX_CONFORMANCE_RESULTS (JSON lines), from which scripts/provider_table.py makes the README's provider table.

A scenario that passes on one provider and fails on another is a bug of that provider: no test here asks which
provider it runs on, except to pick the provider's own way of breaking a resource by hand (Stage.break_function)
and of listing what destroy left (Stage.leftovers), the stage's body limit (Stage.max_body), and what cannot hold
on a provider's platform at all (conformance_lib.PLATFORM_LIMITS: reported as n/a with the reason)."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conformance_lib import CORS, PLATFORM_LIMITS, TOKEN_V1, TOKEN_V2, Stage, fn, hello_code

pytestmark = [pytest.mark.conformance, pytest.mark.slow]


def needs_execution(stage: Stage) -> None:
    if not stage.executes:
        pytest.skip(f"{stage.provider}: functions are not executed here")


def changes(plan: dict[str, Any]) -> list[str]:
    return sorted(c["address"] for c in plan["changes"] if c.get("action") not in ("noop", "read"))


def wait_for_logs(stage: Stage, rid: str, want: str, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        recs = stage.logs("--request-id", rid, "--level", "debug")
        if any(r.get("msg") == want for r in recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.3)


def scenario_deploy(stage: Stage) -> None:
    out = stage.flux("deploy").stdout
    assert "Deploy complete" in out
    state = json.loads((stage.root / ".flux" / "dev" / "state.json").read_text())
    addrs = set(state["resources"])
    for name in ("hello", "secret_hash", "snoop", "items", "list_items", "job", "boom", "slow"):
        assert f"function.{name}" in addrs
    assert {"route.POST_/hello", "route.GET_/items", "route.POST_/items", "migration.001_items.sql",
            "secret.API_TOKEN"} <= addrs
    if stage.executes:
        status, doc, _ = stage.http("POST", "/hello", {"name": "ann"})
        assert status == 200, doc
        assert (doc["message"], doc["who"], doc["app"], doc["style"]) == ("hello v1", "ann", "conformance-app", "warm")
    out_all = out + json.dumps(state)
    assert TOKEN_V1 not in out_all  # no secret value in state or output


def scenario_noop_replan(stage: Stage) -> None:
    assert changes(stage.plan_json()) == []


def scenario_http_routes_and_errors(stage: Stage) -> None:
    needs_execution(stage)
    status, doc, headers = stage.http("POST", "/hello", {"name": "bo"})
    assert status == 200 and doc["request_id"] == headers["x-flux-request-id"]
    status, doc, headers = stage.http("GET", "/items?q=abc")
    assert status == 200 and doc["q"] == "abc"
    status, doc, _ = stage.http("POST", "/hello", raw=b"{not json")
    assert status == 400 and "invalid JSON" in doc["error"]
    status, doc, _ = stage.http("POST", "/hello", raw=b"[1, 2]")
    assert status == 400 and "JSON object" in doc["error"]
    status, doc, _ = stage.http("POST", "/hello", raw=b'{"pad": "' + b"x" * (stage.max_body + 16) + b'"}')
    assert status == 413 and "larger than" in doc["error"], (status, doc)
    status, doc, headers = stage.http("POST", "/boom", {})
    rid = headers["x-flux-request-id"]
    # a thrown error: generic 500 naming the request id (the message may hold anything), the error in the logs
    assert status == 500 and doc["request_id"] == rid and "kaboom" not in json.dumps(doc), doc
    recs = wait_for_logs(stage, rid, "handler failed")
    assert any(r["level"] == "error" and "kaboom from the handler" in json.dumps(r["data"]) for r in recs), recs


def scenario_unknown_route_404_wrong_method_405(stage: Stage) -> None:
    needs_execution(stage)
    status, doc, headers = stage.http("GET", "/hello")
    allowed = {m.strip() for m in headers["allow"].split(",")}
    # POST, plus OPTIONS where the gateway answers CORS preflights (the stage sets `cors`)
    assert status == 405 and "POST" in allowed and allowed <= {"POST", "OPTIONS"} and "not allowed" in doc["error"]
    status, doc, _ = stage.http("POST", "/no/such/route", {})
    assert status == 404 and "no function is routed" in doc["error"]


def scenario_http_contract(stage: Stage) -> None:
    """A returned Response, path parameters with the query string, HEAD, CORS, log levels and the access record."""
    state = json.loads((stage.root / ".flux" / "dev" / "state.json").read_text())
    assert state["resources"]["api.dev"]["attributes"]["cors"] == CORS  # CORS is an attribute of api.<stage>
    needs_execution(stage)
    status, doc, headers = stage.http("GET", "/notes/42?q=abc")
    assert (status, doc) == (201, {"id": "42", "q": "abc"}) and headers["x-note"] == "v1", (status, doc, headers)
    rid = headers["x-flux-request-id"]
    status, doc, _ = stage.http("GET", "/notes/missing")
    assert (status, doc) == (404, {"error": "no such note"})
    status, body, headers = stage.http("HEAD", "/notes/42")
    assert status == 201 and body is None and headers["x-note"] == "v1"
    # CORS: a preflight from an allowed origin is answered by the gateway, a refused origin gets no allow-origin
    pre = {"Origin": "http://app.test", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "content-type"}
    status, _, headers = stage.http("OPTIONS", "/hello", headers=pre)
    assert status in (200, 204) and headers["access-control-allow-origin"] == "http://app.test", headers
    assert "POST" in headers["access-control-allow-methods"] and headers.get("access-control-max-age") == "600"
    status, _, headers = stage.http("OPTIONS", "/hello", headers={**pre, "Origin": "http://evil.test"})
    assert "access-control-allow-origin" not in headers, headers
    status, doc, headers = stage.http("GET", "/notes/7", headers={"Origin": "http://app.test"})
    assert status == 201 and headers["access-control-allow-origin"] == "http://app.test"
    assert "x-note" in headers["access-control-expose-headers"].lower()
    recs = wait_for_logs(stage, rid, "access")
    by_msg = {r["msg"]: r for r in recs}
    assert by_msg["note debug"]["level"] == "debug" and by_msg["note warn"]["level"] == "warn", recs
    access = by_msg["access"]["data"]
    assert (access["method"], access["status"]) == ("GET", 201) and access["path"].startswith("/notes/42"), access


def scenario_logs_request_ids_and_levels(stage: Stage) -> None:
    needs_execution(stage)
    status, _, headers = stage.http("POST", "/hello", {"name": "logger"})
    assert status == 200
    rid = headers["x-flux-request-id"]
    recs = wait_for_logs(stage, rid, "an error line from hello")
    by_msg = {r["msg"]: r for r in recs}
    assert by_msg["hello called"]["level"] == "info" and by_msg["hello called"]["data"] == {"who": "logger"}
    assert by_msg["a warning from hello"]["level"] == "warn"
    assert by_msg["an error line from hello"]["level"] == "error"
    assert all(r["request_id"] == rid and r["function"] == "hello" for r in recs)


def scenario_env_and_secrets_scoping(stage: Stage) -> None:
    needs_execution(stage)
    status, doc, _ = stage.http("POST", "/secret_hash", {})
    assert status == 200, doc
    assert doc == {"sha256": hashlib.sha256(TOKEN_V1.encode()).hexdigest(), "env_has_token": True}
    # snoop names no key in its code: it gets none of the stage's values (not even .env.example's keys)
    for key in ("API_TOKEN", "APP_NAME"):
        status, doc, _ = stage.http("POST", "/snoop", {"key": key})
        assert status == 200 and doc["got"] is False and "not set" in doc["error"], doc
        assert TOKEN_V1 not in json.dumps(doc)


def scenario_db(stage: Stage) -> None:
    needs_execution(stage)
    status, doc, _ = stage.http("POST", "/items", {"name": "first"})
    assert status == 200, doc
    assert doc["runtime"] == "node" and [r["name"] for r in doc["items"]][-1] == "first"
    status, doc, _ = stage.http("GET", "/items")
    assert status == 200 and doc["count"] >= 1


def scenario_async(stage: Stage) -> None:
    needs_execution(stage)
    status, doc, headers = stage.http("POST", "/job", {"n": 7})
    assert status == 202, doc
    rid = doc["request_id"]
    assert rid == headers["x-flux-request-id"]
    recs = wait_for_logs(stage, rid, "job ran")
    assert any(r["msg"] == "job ran" and r["data"] == {"n": 7} for r in recs), recs


def scenario_timeout_504(stage: Stage) -> None:
    needs_execution(stage)
    status, doc, headers = stage.http("POST", "/slow", {"ms": 4000})
    assert status == 504 and "timed out" in doc["error"], (status, doc)
    assert doc["request_id"] == headers["x-flux-request-id"]
    status, doc, _ = stage.http("POST", "/slow", {"ms": 50})  # the function still serves after a timeout
    assert (status, doc) == (200, {"slept": 50}), (status, doc)


def scenario_overload_503(stage: Stage) -> None:
    needs_execution(stage)
    # concurrency 1 with a bounded queue (100): a burst beyond both is refused with 503, nothing else fails
    def one(_: int) -> int | str:
        try:
            return stage.http("POST", "/slow", {"ms": 1200}, timeout=90)[0]
        except OSError as exc:
            return repr(exc)

    with ThreadPoolExecutor(max_workers=110) as pool:
        results = list(pool.map(one, range(110)))
    assert set(results) <= {200, 503, 504}, collections.Counter(results)
    assert results.count(503) >= 1 and results.count(200) >= 1, results


def scenario_update_one_function_under_requests(stage: Stage) -> None:
    stage.write("functions/hello/index.ts", 'import { defineFunction } from "@flux/functions";\n\n' + hello_code("v2"))
    assert changes(stage.plan_json()) == ["function.hello"]
    if not stage.executes:
        stage.flux("deploy")
        assert changes(stage.plan_json()) == []
        return
    seen: list[tuple[int, Any]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            status, doc, _ = stage.http("POST", "/hello", {"name": "load"})
            seen.append((status, doc.get("message") if isinstance(doc, dict) else doc))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        stage.flux("deploy")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    failed = [s for s in seen if s[0] != 200]
    assert not failed, failed[:5]
    messages = [m for _, m in seen]
    assert messages[0] == "hello v1" and messages[-1] == "hello v2"
    assert set(messages) == {"hello v1", "hello v2"}


def scenario_add_and_remove_a_route(stage: Stage) -> None:
    files = fn("extra", 'export default defineFunction({\n  name: "extra",\n  handler: async () => ({ extra: true }),\n});\n',
               route="/extra", method="PUT")
    for rel, text in files.items():
        stage.write(rel, text)
    assert changes(stage.plan_json()) == ["function.extra", "route.PUT_/extra"]
    stage.flux("deploy")
    if stage.executes:
        status, doc, _ = stage.http("PUT", "/extra", {})
        assert (status, doc) == (200, {"extra": True})
    for rel in files:
        (stage.root / rel).unlink()
    (stage.root / "functions" / "extra").rmdir()
    assert changes(stage.plan_json()) == ["function.extra", "route.PUT_/extra"]
    stage.flux("deploy")
    assert changes(stage.plan_json()) == []
    if stage.executes:
        status, doc, _ = stage.http("PUT", "/extra", {})
        assert status == 404, doc


def scenario_rotate_a_secret_without_redeploy(stage: Stage) -> None:
    before = stage.instances()
    stage.flux("secrets", "set", f"API_TOKEN={TOKEN_V2}")
    assert changes(stage.plan_json()) == ["secret.API_TOKEN"]
    out = stage.flux("deploy").stdout
    assert TOKEN_V2 not in out
    assert stage.instances() == before  # no function was redeployed
    if stage.executes:
        # warm code may cache a value for a few seconds (the aws shim: FLUX_SECRET_TTL_MS, 5 s): poll, bounded
        want = {"sha256": hashlib.sha256(TOKEN_V2.encode()).hexdigest(), "env_has_token": True}
        deadline = time.monotonic() + 20
        while True:
            status, doc, _ = stage.http("POST", "/secret_hash", {})
            if doc == want or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert doc == want, (status, doc)
    else:
        value = stage.aws("secretsmanager").get_secret_value(SecretId="flux/conf/dev/API_TOKEN")["SecretString"]
        assert value == TOKEN_V2


def scenario_add_a_migration(stage: Stage) -> None:
    stage.write("schema/002_seed.sql", "INSERT INTO items (name) VALUES ('from-migration');\n")
    assert changes(stage.plan_json()) == ["migration.002_seed.sql"]
    stage.flux("deploy")
    assert changes(stage.plan_json()) == []
    if stage.executes:
        status, doc, _ = stage.http("POST", "/items", {})
        assert status == 200 and "from-migration" in [r["name"] for r in doc["items"]], doc
    else:
        import psycopg

        with psycopg.connect(stage.env["DATABASE_URL"]) as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM items")]
        assert "from-migration" in names


def scenario_drift_detected_by_refresh_only_and_repaired(stage: Stage) -> None:
    stage.break_function("hello")
    plan = stage.plan_json("--refresh-only")
    assert "function.hello" in [d["address"] for d in plan["drift"]], plan
    if stage.executes:
        status, _, _ = stage.http("POST", "/hello", {})
        assert status != 200
    stage.flux("deploy")
    assert changes(stage.plan_json()) == []
    assert "function.hello" not in [d["address"] for d in stage.plan_json("--refresh-only")["drift"]]
    if stage.executes:
        status, doc, _ = stage.http("POST", "/hello", {"name": "again"})
        assert status == 200 and doc["message"] == "hello v2", doc


def scenario_rollback(stage: Stage) -> None:
    """Deploy v3 over v2, roll back to v2 (previous deployment), then apply puts the project's v3 back."""
    before = stage.instances()["hello"]
    stage.write("functions/hello/index.ts", 'import { defineFunction } from "@flux/functions";\n\n' + hello_code("v3"))
    stage.flux("deploy")
    proc = stage.flux("rollback", "hello", "--json", check=False)
    if proc.returncode != 0 and "keeps no previous versions" in proc.stderr + proc.stdout:
        assert "Traceback" not in proc.stderr
        pytest.skip(f"{stage.provider}: no rollback (refused with a message)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["rollbacks"][0]["function"] == "hello"
    if stage.executes:
        status, body, _ = stage.http("POST", "/hello", {})
        assert status == 200 and body["message"] == "hello v2", body
    else:
        assert stage.instances()["hello"] == before
    # the project's code is v3: the next plan updates the function again, and apply does it
    assert "function.hello" in changes(stage.plan_json())
    stage.flux("deploy")
    assert changes(stage.plan_json()) == []
    if stage.executes:
        status, body, _ = stage.http("POST", "/hello", {})
        assert status == 200 and body["message"] == "hello v3", body


def scenario_destroy_leaves_nothing(stage: Stage) -> None:
    stage.remember_images()
    out = stage.flux("destroy", "--auto-approve").stdout
    assert TOKEN_V2 not in out
    state = json.loads((stage.root / ".flux" / "dev" / "state.json").read_text())
    assert state["resources"] == {}
    assert stage.leftovers() == []
    if stage.executes:
        import urllib.error

        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            stage.http("POST", "/hello", {}, timeout=5)


SCENARIOS: list[tuple[str, Callable[[Stage], None]]] = [
    ("deploy", scenario_deploy),
    ("noop_replan", scenario_noop_replan),
    ("http_routes_and_errors", scenario_http_routes_and_errors),
    ("unknown_route_404_wrong_method_405", scenario_unknown_route_404_wrong_method_405),
    ("http_contract", scenario_http_contract),
    ("logs_request_ids_and_levels", scenario_logs_request_ids_and_levels),
    ("env_and_secrets_scoping", scenario_env_and_secrets_scoping),
    ("db", scenario_db),
    ("async", scenario_async),
    ("timeout_504", scenario_timeout_504),
    ("overload_503", scenario_overload_503),
    ("update_one_function_under_requests", scenario_update_one_function_under_requests),
    ("add_and_remove_a_route", scenario_add_and_remove_a_route),
    ("rotate_a_secret_without_redeploy", scenario_rotate_a_secret_without_redeploy),
    ("add_a_migration", scenario_add_a_migration),
    ("drift_detected_by_refresh_only_and_repaired", scenario_drift_detected_by_refresh_only_and_repaired),
    ("rollback", scenario_rollback),
    ("destroy_leaves_nothing", scenario_destroy_leaves_nothing),
]


@pytest.mark.timeout(1800)
def test_conformance(stage: Stage, subtests: pytest.Subtests) -> None:
    """Every scenario against this provider, in order; a failed one does not stop the rest (each reports)."""
    out = os.environ.get("FLUX_CONFORMANCE_RESULTS")
    only = {x for x in os.environ.get("FLUX_CONFORMANCE_ONLY", "").split(",") if x}  # debugging: a subset
    for name, scenario in SCENARIOS:
        if only and name not in only and name != "deploy":
            continue
        outcome = "fail"
        with subtests.test(msg=name):
            try:
                if (stage.provider, name) in PLATFORM_LIMITS:
                    pytest.skip(f"{stage.provider}: {PLATFORM_LIMITS[(stage.provider, name)]}")
                scenario(stage)
                outcome = "pass"
            except pytest.skip.Exception as exc:
                outcome = "n/a: " + str(exc.msg).split(": ", 1)[-1]
                raise
            finally:
                if out:
                    with open(out, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"provider": stage.provider, "scenario": name, "outcome": outcome}) + "\n")
