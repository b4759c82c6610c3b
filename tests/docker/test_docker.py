"""What only the docker provider has: the hardened containers, images built without pulling, shared images,
the engine-unreachable and bad-setting errors (nothing applied), and a SIGKILLed deploy leaving no duplicates."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest
from docker_box import FLUX, Box

pytestmark = [pytest.mark.slow]


def containers(box: Box, stage: str = "dev") -> list:
    with contextlib.closing(box.docker()) as d:
        # polled while a deploy replaces containers: one removed between docker's list and inspect is just gone
        return d.containers.list(all=True, filters={"label": ["flux.project=box", f"flux.stage={stage}"]},
                                 ignore_removed=True)


def test_hardened_containers_from_images_built_without_pulls(box: Box) -> None:
    box.flux("deploy")
    found = containers(box)
    assert sorted(c.labels["flux.function"] for c in found) == ["alpha", "beta"]
    for c in found:
        hc, cfg = c.attrs["HostConfig"], c.attrs["Config"]
        assert c.status == "running"
        assert cfg["User"] == "65532:65532"
        assert hc["ReadonlyRootfs"] is True
        assert hc["CapDrop"] == ["ALL"] and not hc.get("CapAdd")
        assert "no-new-privileges:true" in hc["SecurityOpt"]
        assert hc["Privileged"] is False
        assert hc["Memory"] == 256 * 1024 * 1024 and hc["NanoCpus"] == 1_000_000_000 and hc["PidsLimit"] == 256
        assert not c.attrs["Mounts"]  # no docker socket, no volumes, no bind mounts
        assert {"flux.project", "flux.stage", "flux.function", "flux.digest"} <= set(c.labels)
        assert c.labels["flux.digest"] == box.state()["resources"][f"function.{c.labels['flux.function']}"][
            "attributes"]["digest"]
        # inside: not root, and the root file system refuses writes
        code = ("try { Deno.writeTextFileSync('/flux/x', '1'); console.log('wrote'); } "
                "catch (e) { console.log(String(e.code ?? e.message)); } console.log(Deno.uid());")
        _, out = c.exec_run(["/flux/deno", "eval", code] if c.labels["flux.function"] == "alpha"
                                    else ["/flux/node", "-e", "try { require('fs').writeFileSync('/flux/x', '1'); "
                                          "console.log('wrote') } catch (e) { console.log(e.code) } "
                                          "console.log(process.getuid())"],
                                    environment={"HOME": "/tmp", "DENO_DIR": "/tmp/deno"})
        lines = out.decode().split()
        assert "wrote" not in lines and ("EROFS" in lines[0] or "Read-only" in out.decode()), out
        assert lines[-1] == "65532", out
    with contextlib.closing(box.docker()) as d:
        images = [t for img in d.images.list() for t in img.tags]
        # nothing but what Flux built: no base image was pulled from anywhere
        assert images and all(t.startswith(("flux-runtime:", "flux-fn:")) for t in images), images
        for img in d.images.list():
            assert img.labels.get("flux.built") == "1"
    # the functions answer through the gateway
    port = json.loads((box.root / "flux.project.json").read_text())["stages"]["dev"]["port"]
    import urllib.request

    for name in ("alpha", "beta"):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/{name}", data=b'{"v": 3}', method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert json.loads(resp.read()) == {"echo": 3}


def test_identical_functions_share_images(box: Box) -> None:
    box.flux("deploy")
    box.flux("deploy", "--stage", "dev2")
    dev = {c.labels["flux.function"]: c.labels["flux.image"] for c in containers(box)}
    dev2 = {c.labels["flux.function"]: c.labels["flux.image"] for c in containers(box, "dev2")}
    assert dev == dev2 and len(set(dev.values())) == 2
    # destroying one stage keeps the images the other still runs
    box.flux("destroy", "--auto-approve")
    assert containers(box) == []
    with contextlib.closing(box.docker()) as d:
        for tag in dev2.values():
            d.images.get(tag)
    box.flux("destroy", "--auto-approve", "--stage", "dev2")
    with contextlib.closing(box.docker()) as d:
        left = [t for img in d.images.list() for t in img.tags if t.startswith("flux-fn:")]
    assert left == []


def test_unreachable_engine_fails_before_anything_is_applied(box: Box) -> None:
    env = {**box.env, "DOCKER_HOST": "unix:///tmp/flux-no-such-engine.sock"}
    proc = subprocess.run([str(FLUX), "deploy"], cwd=box.root, env=env, text=True, capture_output=True, timeout=300)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "cannot reach the Docker engine at unix:///tmp/flux-no-such-engine.sock" in err, err
    assert "DOCKER_HOST" in err and "Traceback" not in err
    assert box.state()["resources"] == {}


def test_bad_limit_setting_is_refused_naming_the_file(box: Box) -> None:
    cfg = json.loads((box.root / "flux.project.json").read_text())
    cfg["stages"]["dev"]["cpus"] = "lots"
    (box.root / "flux.project.json").write_text(json.dumps(cfg))
    proc = box.flux("deploy", check=False)
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "flux.project.json (stages.dev.cpus): must be a positive number" in err, err
    assert "Traceback" not in err
    assert box.state()["resources"] == {} and containers(box) == []
    # refused before the stage's runtime started in the background: nothing of it is left running
    time.sleep(3)
    assert not (box.root / ".flux" / "dev" / "daemon.json").exists()
    assert not (box.root / ".flux" / "dev" / "pg").exists()


def test_sigkilled_deploy_leaves_no_duplicate_containers(box: Box) -> None:
    proc = subprocess.Popen([str(FLUX), "deploy"], cwd=box.root, env=box.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not containers(box):
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    box.flux("deploy")
    found = containers(box)
    assert sorted(c.labels["flux.function"] for c in found) == ["alpha", "beta"], [c.name for c in found]
    assert all(c.status == "running" for c in found)
    plan = json.loads(box.flux("plan", "--json").stdout)
    assert [c for c in plan["changes"] if c.get("action") not in ("noop", "read")] == []
