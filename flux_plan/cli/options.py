"""The typer options every command group shares, so `--stage` and `--lock-timeout` mean one thing.

Apart from `common` (which is typer-free): the fast paths open a workspace without importing typer."""

from __future__ import annotations

import typer

StageOption = typer.Option(None, "--stage", "-s", envvar="FLUX_STAGE",
                           help="Stage of flux.project.json (default: dev).")
LockTimeoutOption = typer.Option("30s", "--lock-timeout", envvar="FLUX_LOCK_TIMEOUT",
                                 help="How long to wait for the stage lock (30s, 2m).")
DirOption = typer.Option(None, "--dir", "-C", envvar="FLUX_DIR",
                         help="Project directory (default: found from the current one).")
