"""Small helpers shared by the CLI modules."""

from __future__ import annotations

import click

overrides_argument = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
"""Trailing `key=value` arguments that override any config field (`train.lr=1e-3`)."""
