"""MkDocs hooks: pages that are generated from the code, so they cannot drift from it.

``<!-- generated: recipe-keys -->`` becomes every recipe key (from the schema and its comments),
``<!-- generated: cli-help -->`` the ``--help`` of every ``partwise`` command, and
``<!-- generated: recipes -->`` the packaged recipes with their header lines.
"""

from __future__ import annotations

from typing import Any


def _cli_help() -> str:
    from partwise.cli import _parsers

    parser, subs = _parsers()
    blocks = ["```text", parser.format_help().rstrip(), "```"]
    for name, sub in subs.items():
        blocks += ["", f"### `partwise {name}`", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(blocks)


def _recipes() -> str:
    from partwise.cli._recipes import describe_recipes

    return "```text\n" + describe_recipes() + "\n```"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- generated: recipe-keys -->" in markdown:
        from partwise.recipe import recipe_keys_markdown

        markdown = markdown.replace("<!-- generated: recipe-keys -->", recipe_keys_markdown())
    if "<!-- generated: cli-help -->" in markdown:
        markdown = markdown.replace("<!-- generated: cli-help -->", _cli_help())
    if "<!-- generated: recipes -->" in markdown:
        markdown = markdown.replace("<!-- generated: recipes -->", _recipes())
    return markdown
