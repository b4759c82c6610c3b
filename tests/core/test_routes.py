"""Route patterns at validate time: `{name}` / `{name+}` syntax, and clashing or ambiguous patterns on one method
reported naming both files (the runtime's matcher would otherwise pick one silently)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

FluxRunner = Callable[..., tuple[int, str, str]]


def _problems(flux: FluxRunner, root: Path) -> tuple[int, list[dict]]:
    rc, out, err = flux("validate", "--json", cwd=root)
    assert "Traceback" not in out + err
    return rc, json.loads(out)["problems"]


def test_clashing_and_ambiguous_patterns_name_both_files(tmp_path: Path, flux: FluxRunner,
                                                         make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={
        "get_note": {"flux": {"name": "get_note", "route": "/notes/{id}", "method": "GET"}},
        "get_other": {"flux": {"name": "get_other", "route": "/notes/{x}", "method": "GET"}},
        "left": {"flux": {"name": "left", "route": "/{a}/x/z", "method": "GET"}},
        "right": {"flux": {"name": "right", "route": "/x/{b}/z", "method": "GET"}},
        "greedy_a": {"flux": {"name": "greedy_a", "route": "/f/{p+}", "method": "PUT"}},
        "greedy_b": {"flux": {"name": "greedy_b", "route": "/f/{q+}", "method": "PUT"}},
    })
    rc, probs = _problems(flux, root)
    assert rc == 1
    errors = [p for p in probs if p["severity"] == "error"]
    same = next(p for p in errors if p["file"] == "functions/get_other/flux.json")
    assert same["message"] == ("route GET /notes/{x} is the same route as GET /notes/{id} of 'get_note' "
                               "(functions/get_note/flux.json)")
    assert same["json_path"] == "$.route" and same["hint"]
    amb = next(p for p in errors if p["file"] == "functions/right/flux.json")
    assert "GET /x/{b}/z is ambiguous with GET /{a}/x/z" in amb["message"] and "e.g. /x/x/z" in amb["message"]
    assert "functions/left/flux.json" in amb["message"]
    greedy = next(p for p in errors if p["file"] == "functions/greedy_b/flux.json")
    assert "functions/greedy_a/flux.json" in greedy["message"]
    assert len(errors) == 3


def test_well_ordered_routes_are_valid(tmp_path: Path, flux: FluxRunner, make_project: Callable[..., Path]) -> None:
    """A literal beside a pattern, more literal segments, greedy beside segment params, other methods: one function
    is always the most specific, so nothing is reported."""
    root = make_project(tmp_path, functions={
        "note": {"flux": {"name": "note", "route": "/notes/{id}", "method": "GET"}},
        "new_note": {"flux": {"name": "new_note", "route": "/notes/new", "method": "GET"}},
        "put_note": {"flux": {"name": "put_note", "route": "/notes/{other}", "method": "PUT"}},
        "tag": {"flux": {"name": "tag", "route": "/notes/{id}/tags/{tag}", "method": "GET"}},
        "files": {"flux": {"name": "files", "route": "/notes/{rest+}", "method": "GET"}},
    })
    rc, probs = _problems(flux, root)
    assert rc == 0, probs
    assert [p for p in probs if p["severity"] == "error"] == []


def test_malformed_parameters_are_reported(tmp_path: Path, flux: FluxRunner, make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={
        "mid": {"flux": {"name": "mid", "route": "/a/x{id}"}},
        "twice": {"flux": {"name": "twice", "route": "/a/{id}/b/{id}"}},
        "notlast": {"flux": {"name": "notlast", "route": "/a/{p+}/b"}},
    })
    rc, probs = _problems(flux, root)
    assert rc == 1
    by = {p["file"]: p for p in probs if p["severity"] == "error"}
    assert "a parameter is a whole segment" in by["functions/mid/flux.json"]["message"]
    assert "{id} appears twice" in by["functions/twice/flux.json"]["message"]
    assert "must be the last segment" in by["functions/notlast/flux.json"]["message"]
    assert all(p["json_path"] == "$.route" and "{path+}" in p["hint"] for p in by.values())


def test_cors_setting_is_validated_in_plain_words(tmp_path: Path, flux: FluxRunner,
                                                  make_project: Callable[..., Path]) -> None:
    cors = {"allow_origins": ["*", "http://x.test/path"], "allow_credentials": True, "allow_methods": ["get"],
            "max_age": -1, "expose_headers": ["bad header"], "allow_origin": ["typo"]}
    root = make_project(tmp_path, project={"name": "proj", "stages": {"dev": {"provider": "record", "cors": cors}}})
    rc, probs = _problems(flux, root)
    assert rc == 1
    by = {p["json_path"]: p for p in probs}
    assert by["$.stages.dev.cors.allow_origin"]["hint"] == "did you mean 'allow_origins'?"
    assert by["$.stages.dev.cors.allow_methods[0]"]["hint"] == 'HTTP methods are upper case: use "GET"'
    assert "cannot be combined with allow_credentials" in by["$.stages.dev.cors.allow_origins"]["message"]
    assert by["$.stages.dev.cors.allow_origins[1]"]["message"] == "'http://x.test/path' is not an origin"
    assert by["$.stages.dev.cors.expose_headers[0]"]["message"] == "'bad header' is not a header name"
    assert "0 to 86400" in by["$.stages.dev.cors.max_age"]["hint"]
    assert all(p["file"] == "flux.project.json" for p in by.values()) and len(by) == 6
    ok = {"allow_origins": ["http://localhost:5173"], "allow_methods": ["GET", "POST"], "allow_headers": ["*"],
          "expose_headers": ["x-note"], "max_age": 600, "allow_credentials": True}
    (root / "flux.project.json").write_text(json.dumps({"name": "proj", "stages": {"dev": {"provider": "record",
                                                                                            "cors": ok}}}))
    rc, probs = _problems(flux, root)
    assert rc == 0, probs
    rc, out, _ = flux("plan", "--json", cwd=root)
    api = next(c for c in json.loads(out)["changes"] if c["address"] == "api.dev")
    assert api["resource"]["attributes"]["cors"] == ok
    assert {"path": "cors", "before": None, "after": ok} in api["diffs"]
