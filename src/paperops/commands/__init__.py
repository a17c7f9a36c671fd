"""CLI command groups that live outside `paperops.cli`; the root app mounts each with add_typer."""
