"""The Flux Deno layer: the `deno` binary of the PyPI `deno` wheel, the custom-runtime `bootstrap`
and the Flux runtime loop. Built once per (deno version, runtime files) into a user cache, uploaded
through S3 (too big for a direct upload), published once per stage and found again by digest."""

from __future__ import annotations

import hashlib
import os
import threading
from importlib.metadata import version
from pathlib import Path
from typing import Any

from flux_aws.packaging import RUNTIME_DIR, cache_dir, runtime_files, zip_entries
from flux_aws.retry import aws_call

_build_lock = threading.Lock()


def deno_binary() -> Path:
    import deno

    return Path(deno.find_deno_bin())


def layer_digest() -> str:
    h = hashlib.sha256(f"deno={version('deno')}\n".encode())
    for name, data, mode in [("bootstrap", (RUNTIME_DIR / "bootstrap").read_bytes(), 0o755), *runtime_files()]:
        h.update(f"{name}:{mode}\n".encode() + data)
    return h.hexdigest()


def build_layer_zip() -> Path:
    """Path of the cached layer zip (built on first use, atomically)."""
    digest = layer_digest()
    path = cache_dir() / f"deno-layer-{digest[:20]}.zip"
    with _build_lock:
        if path.exists():
            return path
        entries = [
            ("bootstrap", (RUNTIME_DIR / "bootstrap").read_bytes(), 0o755),
            ("bin/deno", deno_binary().read_bytes(), 0o755),
            *runtime_files(),
        ]
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(zip_entries(entries, level=6))
        os.replace(tmp, path)
        for old in cache_dir().glob("deno-layer-*.zip"):  # ~42 MB each: keep only the current one
            if old != path:
                old.unlink(missing_ok=True)
    return path


def ensure_layer(lam: Any, s3: Any, layer_name: str, bucket: str | None, key_prefix: str) -> str:
    """LayerVersionArn of this stage's Deno layer at the current digest, publishing it if needed."""
    digest = layer_digest()
    marker = f"flux-deno {version('deno')} {digest[:20]}"
    for page in lam.get_paginator("list_layer_versions").paginate(LayerName=layer_name):
        for lv in page.get("LayerVersions", []):
            if lv.get("Description") == marker:
                return str(lv["LayerVersionArn"])
    zip_path = build_layer_zip()
    if bucket:
        key = f"{key_prefix}deno-layer-{digest[:20]}.zip"
        with zip_path.open("rb") as fh:
            aws_call(s3.upload_fileobj, fh, bucket, key)
        content: dict[str, Any] = {"S3Bucket": bucket, "S3Key": key}
    else:
        content = {"ZipFile": zip_path.read_bytes()}
    resp = aws_call(
        lam.publish_layer_version,
        LayerName=layer_name,
        Description=marker,
        Content=content,
        CompatibleRuntimes=["provided.al2023"],
        CompatibleArchitectures=["x86_64"],
    )
    return str(resp["LayerVersionArn"])


def delete_layer(lam: Any, layer_name: str) -> None:
    for page in lam.get_paginator("list_layer_versions").paginate(LayerName=layer_name):
        for lv in page.get("LayerVersions", []):
            aws_call(lam.delete_layer_version, LayerName=layer_name, VersionNumber=lv["Version"])
