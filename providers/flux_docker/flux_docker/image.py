"""Images built without any registry pull.

A runtime image per (runtime, binary, runtime files): `FROM scratch` + the runtime binary (deno from the PyPI `deno`
wheel, or the `node` on PATH), the shared libraries `ldd` lists for it, the dynamic loader, and the worker runtime
(core.mjs + container_worker.mjs). A function image is that plus one layer: the function's bundle under /app, tagged
by the digest of (runtime image, bundle bytes), so identical functions share one image and an unchanged function is
never rebuilt. Images carry the label `flux.built=1` so destroy removes only what Flux built.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

from flux_plan.errors import ProviderError

RUNTIME_REPO = "flux-runtime"
FUNCTION_REPO = "flux-fn"
BUILT_LABEL = "flux.built"
CONTAINER_UID = 65532  # "nonroot": no entry in any passwd file, owns nothing in the image
_build_lock = threading.Lock()


def runtime_sources() -> dict[str, Path]:
    """The worker-side JavaScript: the shared runtime files (flux_plan/runtime: core.mjs and the modules it imports)
    + the container transport."""
    from flux_plan import runtime as shared

    base = shared.shared_runtime_dir()
    files = {name: base / name for name in getattr(shared, "SHARED_FILES", ("core.mjs",))}  # core imports siblings
    files["container_worker.mjs"] = Path(__file__).resolve().parent / "runtime" / "container_worker.mjs"
    return files


def runtime_binary(runtime: str, node_bin: str | None = None) -> Path:
    if runtime == "deno":
        from flux_local.runtime import deno_bin

        return Path(deno_bin()).resolve()
    found = node_bin or shutil.which("node")
    if not found:
        raise ProviderError("runtime node: no `node` on PATH to put into the function's image; install Node.js 20+")
    return Path(found).resolve()


def shared_libraries(binary: Path) -> list[Path]:
    """Absolute paths `ldd` resolves for the binary (including the loader), as the binary will look them up."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProviderError(f"cannot list the shared libraries of {binary} with ldd: {exc}") from None
    libs: list[Path] = []
    for line in out.splitlines():
        line = line.strip()
        path = line.split("=>", 1)[1].strip() if "=>" in line else line
        path = path.split(" (", 1)[0].strip()
        if path.startswith("/"):
            libs.append(Path(path))
    return libs


def _file_digest(h: Any, path: Path) -> None:
    st = path.stat()
    h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())


def runtime_tag(runtime: str, node_bin: str | None = None) -> str:
    h = hashlib.sha256(f"flux-runtime-v1\0{runtime}\0".encode())
    binary = runtime_binary(runtime, node_bin)
    for p in [binary, *shared_libraries(binary)]:
        _file_digest(h, p)
    for name, p in sorted(runtime_sources().items()):
        h.update(name.encode() + b"\0" + p.read_bytes())
    return f"{RUNTIME_REPO}:{runtime}-{h.hexdigest()[:20]}"


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, src: Path, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = src.stat().st_size
    info.mode = mode
    with src.open("rb") as fh:
        tar.addfile(info, fh)


def _build(client: Any, tag: str, fill: Any, labels: dict[str, str]) -> None:
    import docker.errors

    with tempfile.TemporaryFile() as fh:
        with tarfile.open(fileobj=fh, mode="w") as tar:
            fill(tar)
        fh.seek(0)
        try:
            client.images.build(fileobj=fh, custom_context=True, tag=tag, pull=False, rm=True, forcerm=True,
                                labels={BUILT_LABEL: "1", **labels})
        except docker.errors.BuildError as exc:
            tail = " | ".join(str(x.get("stream", x.get("error", ""))).strip() for x in list(exc.build_log)[-5:])
            raise ProviderError(f"building image {tag} failed: {exc.msg} ({tail})") from None
        except docker.errors.APIError as exc:
            raise ProviderError(f"building image {tag} failed: {exc.explanation or exc}") from None


def _exists(client: Any, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_runtime_image(client: Any, runtime: str, node_bin: str | None = None) -> str:
    tag = runtime_tag(runtime, node_bin)
    with _build_lock:
        if _exists(client, tag):
            return tag
        binary = runtime_binary(runtime, node_bin)
        libs = shared_libraries(binary)

        def fill(tar: tarfile.TarFile) -> None:
            _add_bytes(tar, "Dockerfile", b"FROM scratch\nCOPY rootfs/ /\n")
            made: set[str] = set()
            for d in ["rootfs", "rootfs/flux", "rootfs/app", "rootfs/tmp"]:
                _add_dir(tar, d, 0o1777 if d.endswith("tmp") else 0o755)
                made.add(d)
            for lib in libs:
                parts = lib.parent.parts[1:]
                for i in range(1, len(parts) + 1):
                    d = "rootfs/" + "/".join(parts[:i])
                    if d not in made:
                        _add_dir(tar, d)
                        made.add(d)
                _add_file(tar, "rootfs" + str(lib), lib.resolve(), 0o755)
            _add_file(tar, f"rootfs/flux/{runtime}", binary, 0o755)
            for name, src in runtime_sources().items():
                _add_file(tar, f"rootfs/flux/{name}", src, 0o644)
            _add_bytes(tar, "rootfs/etc/passwd", f"nonroot:x:{CONTAINER_UID}:{CONTAINER_UID}::/tmp:/sbin/nologin\n".encode())

        _build(client, tag, fill, {"flux.runtime": runtime})
    return tag


def function_tag(base: str, bundle_dir: Path) -> str:
    h = hashlib.sha256(f"flux-fn-v1\0{base}\0".encode())
    for p in sorted(bundle_dir.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(bundle_dir)).encode() + b"\0" + p.read_bytes() + b"\0")
    return f"{FUNCTION_REPO}:{h.hexdigest()[:24]}"


def ensure_function_image(client: Any, runtime: str, bundle_dir: Path, node_bin: str | None = None) -> str:
    """The image of one function bundle (built once per content digest)."""
    base = ensure_runtime_image(client, runtime, node_bin)
    tag = function_tag(base, bundle_dir)
    with _build_lock:
        if _exists(client, tag):
            return tag

        def fill(tar: tarfile.TarFile) -> None:
            _add_bytes(tar, "Dockerfile", f"FROM {base}\nCOPY app/ /app/\n".encode())
            _add_dir(tar, "app")
            for p in sorted(bundle_dir.rglob("*")):
                rel = "app/" + str(p.relative_to(bundle_dir))
                if p.is_dir():
                    _add_dir(tar, rel)
                elif p.is_file():
                    _add_file(tar, rel, p, 0o644)

        _build(client, tag, fill, {"flux.runtime": runtime, "flux.base": base})
    return tag


def image_exists(client: Any, tag: str) -> bool:
    return _exists(client, tag)

