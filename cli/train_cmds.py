"""Subcommands (filled in by their issue)."""

COMMANDS: list = []
