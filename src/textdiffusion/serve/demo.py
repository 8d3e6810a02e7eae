"""The demo page at ``GET /`` (filled in below)."""

from __future__ import annotations

import html


def page(name: str, run) -> str:
    return f"<!doctype html><title>textdiffusion: {html.escape(name)}</title><p>textdiffusion serving {html.escape(name)}"
