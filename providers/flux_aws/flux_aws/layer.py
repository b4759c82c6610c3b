"""The Flux Deno layer: the `deno` binary for the function's architecture, the custom-runtime
`bootstrap` and the Flux runtime loop. The binary comes from the PyPI `deno` wheel of the matching
Linux platform (the same version as the installed one), downloaded once with pip into the user
cache and checked to be an ELF executable for that CPU: a deploy from macOS or arm64 Linux ships a
binary that runs on Lambda. Built once per (arch, deno version, runtime files), uploaded through S3
(too big for a direct upload), published once per stage and architecture, found again by digest."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from flux_aws.packaging import RUNTIME_DIR, cache_dir, runtime_files, zip_entries
from flux_aws.retry import aws_call
from flux_plan.errors import ProviderError

_build_lock = threading.Lock()
# Lambda architecture -> (manylinux platform tag of the deno wheel, ELF e_machine)
PLATFORMS = {"x86_64": ("manylinux_2_27_x86_64", 0x3E), "arm64": ("manylinux_2_27_aarch64", 0xB7)}


def deno_version() -> str:
    return version("deno")


def elf_machine(path: Path) -> int | None:
    """e_machine of a 64-bit little-endian ELF file, None for anything else (Mach-O, PE, ...)."""
    with path.open("rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return None
    return int.from_bytes(head[18:20], "little")


def _local_binary() -> Path | None:
    try:
        import deno

        return Path(deno.find_deno_bin())
    except (ImportError, OSError, RuntimeError):
        return None


def deno_binary(arch: str) -> Path:
    """A Linux `deno` binary for `arch`: the installed one when it is exactly that, else the one of
    the `deno` wheel for that platform (pip download, cached)."""
    tag, machine = PLATFORMS[arch]
    local = _local_binary()
    if local is not None and local.is_file() and elf_machine(local) == machine:
        return local
    ver = deno_version()
    out = cache_dir() / f"deno-{ver}-{arch}" / "deno"
    if out.is_file() and elf_machine(out) == machine:
        return out
    with tempfile.TemporaryDirectory(prefix="flux-deno-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"deno=={ver}", "--no-deps", "--only-binary=:all:",
               "--platform", tag, "--quiet", "--dest", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
        wheels = sorted(Path(tmp).glob("deno-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ProviderError(
                f"cannot fetch the deno {ver} wheel for {tag} (the Deno layer for {arch} functions): "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}; it is fetched once with pip from the package "
                f"index into {out.parent} (or put a Linux {arch} `deno` {ver} binary there yourself)"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((m for m in zf.namelist() if m.endswith("/scripts/deno") or m.endswith("/bin/deno")), None)
            if member is None:
                raise ProviderError(f"{wheels[0].name}: no deno binary inside the wheel")
            out.parent.mkdir(parents=True, exist_ok=True)
            part = out.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            with zf.open(member) as src, part.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    if elf_machine(part) != machine:
        part.unlink(missing_ok=True)
        raise ProviderError(f"the deno wheel for {tag} does not hold a Linux {arch} binary")
    part.chmod(0o755)
    os.replace(part, out)
    return out


def layer_digest(arch: str = "x86_64") -> str:
    h = hashlib.sha256(f"deno={deno_version()}\narch={arch}\n".encode())
    for name, data, mode in [("bootstrap", (RUNTIME_DIR / "bootstrap").read_bytes(), 0o755), *runtime_files()]:
        h.update(f"{name}:{mode}\n".encode() + data)
    return h.hexdigest()


def build_layer_zip(arch: str = "x86_64") -> Path:
    """Path of the cached layer zip for `arch` (built on first use, atomically; reproducible)."""
    digest = layer_digest(arch)
    path = cache_dir() / f"deno-layer-{arch}-{digest[:20]}.zip"
    with _build_lock:
        if path.exists():
            return path
        entries = [
            ("bootstrap", (RUNTIME_DIR / "bootstrap").read_bytes(), 0o755),
            ("bin/deno", deno_binary(arch).read_bytes(), 0o755),
            *runtime_files(),
        ]
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(zip_entries(entries, level=6))
        os.replace(tmp, path)
        for old in cache_dir().glob(f"deno-layer-{arch}-*.zip"):  # ~42 MB each: keep only the current one
            if old != path:
                old.unlink(missing_ok=True)
    return path


def _find(lam: Any, layer_name: str, marker: str) -> str | None:
    pages = aws_call(lambda: list(lam.get_paginator("list_layer_versions").paginate(LayerName=layer_name)))
    for page in pages:
        for lv in page.get("LayerVersions", []):
            if lv.get("Description") == marker:
                return str(lv["LayerVersionArn"])
    return None


def ensure_layer(lam: Any, s3: Any, layer_name: str, bucket: str | None, key_prefix: str,
                 arch: str = "x86_64") -> str:
    """LayerVersionArn of this stage's Deno layer for `arch` at the current digest, publishing it if
    needed (a publish whose answer was lost is found by its marker, not published twice)."""
    digest = layer_digest(arch)
    marker = f"flux-deno {deno_version()} {arch} {digest[:20]}"
    found = _find(lam, layer_name, marker)
    if found:
        return found
    zip_path = build_layer_zip(arch)
    if bucket:
        key = f"{key_prefix}deno-layer-{arch}-{digest[:20]}.zip"
        with zip_path.open("rb") as fh:
            data = fh.read()
        aws_call(s3.put_object, Bucket=bucket, Key=key, Body=data)
        content: dict[str, Any] = {"S3Bucket": bucket, "S3Key": key}
    else:
        content = {"ZipFile": zip_path.read_bytes()}
    resp = aws_call(
        lam.publish_layer_version,
        LayerName=layer_name,
        Description=marker,
        Content=content,
        CompatibleRuntimes=["provided.al2023"],
        CompatibleArchitectures=[arch],
        adopt=lambda: (lambda arn: {"LayerVersionArn": arn} if arn else None)(_find(lam, layer_name, marker)),
    )
    return str(resp["LayerVersionArn"])


def delete_layer(lam: Any, layer_name: str) -> None:
    pages = aws_call(lambda: list(lam.get_paginator("list_layer_versions").paginate(LayerName=layer_name)))
    for page in pages:
        for lv in page.get("LayerVersions", []):
            aws_call(lam.delete_layer_version, LayerName=layer_name, VersionNumber=lv["Version"])
