"""Atomic writes: every artefact genrec produces appears whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from genrec.errors import GenrecError


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `target` only if the block succeeds (`replace_dir`)."""
    target = Path(target)
    recover_dir(target)
    if target.exists() and not overwrite:
        raise GenrecError(f"output {target} already exists (pass --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the swap succeeded


def _old(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def recover_dir(target: str | Path) -> None:
    """Undo what a kill between `replace_dir`'s two renames left: the old directory aside at `.NAME.old` and
    nothing at NAME is put back; a `.NAME.old` beside a complete NAME (a kill after the swap) is removed."""
    target = Path(target)
    old = _old(target)
    if old.is_dir() and not target.exists():
        os.replace(old, target)
    elif old.is_dir():
        shutil.rmtree(old, ignore_errors=True)


def replace_dir(new: Path, target: Path) -> None:
    """Put the complete directory `new` in place of `target` (two renames; the old one is then removed). A kill
    between the renames leaves the old directory whole at `.NAME.old` beside it, put back by the next
    `recover_dir`; a failed second rename puts it back at once. The one owner of this swap: `atomic_dir` (data,
    retrievers, merged weights), `sft --overwrite` and `catalog add` all stage a directory and swap it in."""
    new, target = Path(new), Path(target)
    if new == target:
        return
    recover_dir(target)
    old = _old(target)
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError as exc:
        if old.is_dir() and not target.exists():
            os.replace(old, target)
        raise GenrecError(f"could not put the new {target.name} in place at {target} ({exc.strerror}); "
                          f"{'the old one is as it was' if target.exists() else 'nothing was there'}") from None
    shutil.rmtree(old, ignore_errors=True)


def cache_dir() -> Path:
    """genrec's own cache ($GENREC_CACHE, default ~/.cache/genrec): the converted default model, item text
    embeddings. Nothing in it is anyone else's; anything in it can be made again."""
    return Path(os.environ.get("GENREC_CACHE", Path.home() / ".cache" / "genrec")).expanduser()


@contextlib.contextmanager
def atomic_file(target: str | Path, mode: str = "w") -> Iterator:
    """Open a temporary file next to `target`; rename it over `target` when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj) -> None:
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def write_jsonl(path: str | Path, rows) -> None:
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_json(path: str | Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
