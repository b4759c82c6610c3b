"""`flux version` and `flux init`."""

from __future__ import annotations

import typer

from flux_plan import __version__


def register(app: typer.Typer) -> None:
    @app.command()
    def version() -> None:
        """Print the Flux version and the installed providers."""
        from flux_plan.providers import available_providers

        typer.echo(f"flux {__version__}")
        for name, ep in sorted(available_providers().items()):
            typer.echo(f"  provider {name}: {ep.value}")
