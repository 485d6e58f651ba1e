"""Run a documentation page as a reader would, in the current folder (``python docs_runner.py PAGE``).

1. every fenced block with a ``title="NAME"`` is written to the file NAME (a module, a recipe);
2. the other ``python`` blocks run in order, in one namespace (``py`` blocks are fragments: shown,
   not run);
3. each ``<!-- test: COMMAND -->`` runs in a shell and must exit 0;
4. each ``<!-- assert: EXPRESSION -->`` must be true in that namespace, and each
   ``<!-- expect: TEXT -->`` must appear in what the page printed.

Snippet lines (``--8<-- "README.md:quickstart"``) are expanded as the docs build expands them.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.M | re.S)
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::([\w-]+))?"$', re.M)
TITLE = re.compile(r'title="([^"]+)"')


def expand(text: str) -> str:
    def include(m: re.Match[str]) -> str:
        body = (ROOT / m.group(1)).read_text(encoding="utf-8")
        name = m.group(2)
        if name is None:
            return body
        section = body.split(f"--8<-- [start:{name}]", 1)[1].split(f"--8<-- [end:{name}]", 1)[0]
        return section.split("\n", 1)[1].rsplit("\n", 1)[0]  # without the marker lines

    return SNIPPET.sub(include, text)


def comments(text: str, kind: str) -> list[str]:
    return [c.strip() for c in re.findall(rf"<!-- {kind}: (.*?) -->", text, flags=re.S)]


def main(page: Path) -> int:
    text = expand(page.read_text(encoding="utf-8"))
    blocks = FENCE.findall(text)
    for _, info, body in blocks:
        title = TITLE.search(info)
        if title:
            Path(title.group(1)).write_text(body, encoding="utf-8")
    printed = io.StringIO()

    class Tee(io.TextIOBase):
        def write(self, s: str) -> int:
            printed.write(s)
            return sys.__stdout__.write(s)

    namespace: dict[str, object] = {"__name__": "__main__"}
    with contextlib.redirect_stdout(Tee()):
        for lang, info, body in blocks:
            if lang == "python" and not TITLE.search(info):
                exec(compile(body, str(page), "exec"), namespace)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in comments(text, "test"):
        proc = subprocess.run(command, shell=True, capture_output=True, text=True, env=env)
        printed.write(proc.stdout + proc.stderr)
        print(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            print(f"FAILED: `{command}` exited with {proc.returncode}", file=sys.stderr)
            return 1
    failed = [e for e in comments(text, "assert") if not eval(e, namespace)]  # noqa: S307 - the page's own checks
    failed += [f"printed {t!r}" for t in comments(text, "expect") if t not in printed.getvalue()]
    for f in failed:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
