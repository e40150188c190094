"""MkDocs hook: the API reference covers every module. Subpackages are documented with their submodules by the
pages under docs/api/; a top-level module of ``mbirl`` that no page names is appended to the "Utilities" section of
``api/data.md``, so a new module never silently misses the reference."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parent / "src" / "mbirl"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri != "api/data.md":
        return markdown
    docs = Path(config["docs_dir"]) / "api"
    named = set()
    for md in docs.glob("*.md"):
        named.update(re.findall(r"^::: ([\w.]+)", md.read_text(), flags=re.M))
    extra = [f"mbirl.{p.stem}" for p in sorted(SRC.glob("*.py"))
             if p.stem != "__init__" and f"mbirl.{p.stem}" not in named]
    return markdown + "".join(f"\n::: {m}\n" for m in extra)
