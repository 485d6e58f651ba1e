"""The one atomic file writer: the whole file goes to a temporary name beside the target, then is
renamed over it, so a reader (or a resumed run) sees the old file or the new one, never half of one.

A temporary is named ``.NAME.tmp-<pid>`` (plus a suffix when the writer needs one, e.g. ``.png``);
a process killed mid-write leaves it behind, and :func:`partwise._run._checkpoint.remove_debris` removes it
once that process is gone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write the whole file to: renamed over ``path`` when the
    block ends without an error, removed otherwise.

    Examples:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "notes.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
        ('done', ['notes.txt'])
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
