"""Fingerprints: content digests of input files and versions of stage code.

A stage's fingerprint is a hash of (the spec fields it reads, its inputs' fingerprints,
its code version). Cache paths carry it, so a changed field, file or stage code can never
reuse a stale cache and an unchanged one is never recomputed.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from giblet_kedro.errors import InputDataError

FINGERPRINT_CHARS = 16
_DIGEST_LOCK = threading.Lock()


def hash_payload(payload: Any) -> str:
    """Stable short hash of a JSON-serialisable payload (key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_CHARS]


# --------------------------------------------------------------------- code versions
def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(getattr(body[0], "value", None), ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body[0] = ast.Pass()
    return tree


@lru_cache(maxsize=64)
def module_code_hash(module_name: str) -> str:
    """Hash of a module's code with comments, docstrings and formatting removed.

    Editing documentation never invalidates a cache; changing what the code does always
    does, with no version constant to forget to bump.
    """
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"cannot locate module {module_name} to fingerprint its code")
    source = Path(spec.origin).read_text(encoding="utf-8")
    tree = _strip_docstrings(ast.parse(source))
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()[:FINGERPRINT_CHARS]


def code_version(module_names: tuple[str, ...]) -> str:
    return hash_payload({name: module_code_hash(name) for name in sorted(module_names)})


# ---------------------------------------------------------------------- file digests
class DigestCache:
    """Content digests of raw files, with a fast path keyed on (size, mtime, inode).

    Hashing a multi-GB NIfTI takes seconds; an unchanged file (same size, modification
    time and inode) reuses its stored digest. Any change to the file changes its mtime,
    so it is hashed again.
    """

    def __init__(self, store: Path):
        self.store = store
        self._entries: dict[str, dict] | None = None

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            try:
                self._entries = json.loads(self.store.read_text())
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def _save(self) -> None:
        self.store.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.store.parent, prefix=".digests.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(self._load(), handle, indent=0, sort_keys=True)
        os.replace(tmp, self.store)

    def digest(self, path: Path, label: str) -> str:
        """Content digest of ``path``; ``label`` names the spec key in error messages."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise InputDataError(f"{label}: file not found: {path}") from None
        except OSError as exc:
            raise InputDataError(f"{label}: cannot read {path}: {exc}") from None
        if not path.is_file():
            raise InputDataError(f"{label}: {path} is not a file")
        key = str(path.resolve())
        signature = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ino": stat.st_ino}
        with _DIGEST_LOCK:
            entry = self._load().get(key)
            if entry and all(entry.get(k) == v for k, v in signature.items()):
                return entry["digest"]
        try:
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, "blake2b").hexdigest()[:32]
        except OSError as exc:
            raise InputDataError(f"{label}: cannot read {path}: {exc}") from None
        with _DIGEST_LOCK:
            self._load()[key] = {**signature, "digest": digest}
            try:
                self._save()
            except OSError:
                pass  # a read-only data folder only loses the fast path
        return digest
