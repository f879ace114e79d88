"""Writes the parts of the docs site that are made from the code, so that they cannot drift from it:

- the settings table in docs/configuration.md, from the `Settings` class (each field's description is its row),
- docs/reference/openapi.json, the server's own OpenAPI document, which docs/reference/index.md renders.

    python scripts/docs.py            # rewrite them
    python scripts/docs.py --check    # exit 1, naming the file, when one differs from the code (the tests run this)
    mkdocs serve                      # the site at http://127.0.0.1:8001 (mkdocs build --strict: into site/)
"""

from __future__ import annotations

import argparse
import json
import sys
from enum import Enum
from pathlib import Path

from pydantic import ByteSize

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's package, whatever is installed

from local_llm_api.config import Settings  # noqa: E402  (after the path above)

CONFIGURATION = ROOT / "docs" / "configuration.md"
OPENAPI = ROOT / "docs" / "reference" / "openapi.json"
BEGIN = "<!-- settings table: written by scripts/docs.py from local_llm_api/config.py; edit the descriptions there -->"
END = "<!-- end of the settings table -->"


def shown(value: object) -> str:
    """A default as a user writes it in the environment."""
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, ByteSize):
        return f"`{value.human_readable(decimal=False)}`" if value else "`0`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise SystemExit(f"Settings.{name} has no description: write the line docs/configuration.md should show")
        meaning = field.description.replace("|", "\\|")
        rows.append(f"| `{name.upper()}` | {shown(field.default)} | {meaning} |")
    return "\n".join([BEGIN, "", *rows, "", END])


def configuration_page() -> str:
    page = CONFIGURATION.read_text()
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + settings_table() + tail


def openapi_document() -> str:
    from local_llm_api.main import create_app

    return json.dumps(create_app(Settings(_env_file=None)).openapi(), indent=1, sort_keys=False) + "\n"  # type: ignore[call-arg]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file differs from the code")
    args = parser.parse_args()
    stale = []
    for path, text in ((CONFIGURATION, configuration_page()), (OPENAPI, openapi_document())):
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        sys.exit(f"out of date with the code: {', '.join(map(str, stale))}; run python scripts/docs.py")
    print("written: " + ", ".join(map(str, stale)) if stale else "up to date")


if __name__ == "__main__":
    main()
