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
from functools import cache, lru_cache
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


def module_code_hash(module_name: str) -> str:
    """Hash of a module's code with comments, docstrings and formatting removed.

    Editing documentation never invalidates a cache; changing what the code does always
    does, with no version constant to forget to bump.
    """
    path = module_file(module_name)
    if path is None:
        raise RuntimeError(f"cannot locate module {module_name} to fingerprint its code")
    stat = path.stat()
    return _file_code_hash(str(path), stat.st_mtime_ns, stat.st_size)


@cache
def _file_code_hash(path: str, mtime_ns: int, size: int) -> str:
    """:func:`source_hash` of a file, once per version of it (keyed by its stat: an edit
    in a long-lived process, a notebook or ``kedro viz``, is hashed again). Unbounded:
    a bounded cache smaller than the package (100+ modules) missed on every sorted pass."""
    return source_hash(Path(path).read_text(encoding="utf-8"))


def source_hash(source: str) -> str:
    """Hash of Python source with comments, docstrings and formatting removed."""
    tree = _strip_docstrings(ast.parse(source))
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()[:FINGERPRINT_CHARS]


def code_version(module_names: tuple[str, ...] | frozenset[str]) -> str:
    return hash_payload({name: module_code_hash(name) for name in sorted(module_names)})


# ------------------------------------------------------------------ the import graph
PACKAGE = "giblet_kedro"
# Libraries whose version changes what a stage computes: their installed versions are
# part of the fingerprint of every stage whose code imports them.
TRACKED_LIBRARIES = ("torch", "nilearn", "encodec", "open_clip", "himalaya")


@lru_cache(maxsize=1)
def _package_root() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    return Path(next(iter(spec.submodule_search_locations)))


def module_file(module_name: str) -> Path | None:
    """The source file of one of the project's modules, found without importing it (so
    fingerprinting never loads torch); None for anything else."""
    parts = module_name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = _package_root().joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_module(name: str) -> bool:
    return module_file(name) is not None


@lru_cache(maxsize=256)
def _tree(module_name: str) -> ast.Module:
    path = module_file(module_name)
    if path is None:
        raise RuntimeError(f"cannot locate module {module_name} to fingerprint its code")
    return ast.parse(path.read_text(encoding="utf-8"))


def _imported(node: ast.AST, module_name: str) -> dict[str, str]:
    """``{local name: module}`` for every import under ``node``; a ``from X import y``
    names module ``X.y`` when that is a module, else ``X``."""
    names: dict[str, str] = {}
    for item in ast.walk(node):
        if isinstance(item, ast.Import):
            for alias in item.names:
                names[(alias.asname or alias.name).split(".")[0]] = alias.name if alias.asname else \
                    alias.name.split(".")[0]
                names.setdefault(alias.name, alias.name)
        elif isinstance(item, ast.ImportFrom) and item.module is not None:
            base = item.module if item.level == 0 else \
                ".".join(module_name.split(".")[: -item.level] + [item.module])
            for alias in item.names:
                candidate = f"{base}.{alias.name}"
                names[alias.asname or alias.name] = candidate if _is_module(candidate) else base
    return names


@lru_cache(maxsize=512)
def module_imports(module_name: str) -> frozenset[str]:
    """Every module ``module_name`` imports, at its top or inside its functions."""
    return frozenset(_imported(_tree(module_name), module_name).values())


def function_imports(module_name: str, function_name: str) -> frozenset[str]:
    """The modules a function of ``module_name`` reaches directly: those it names (through
    the module's imports), imports itself, or reaches through other functions of its
    module that it calls."""
    tree = _tree(module_name)
    table = _imported(tree, module_name)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    if function_name not in functions:
        raise RuntimeError(f"{module_name} has no function {function_name} to fingerprint")
    reached: set[str] = set()
    seen: set[str] = set()
    pending = [function_name]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        body = functions[name]
        reached |= set(_imported(body, module_name).values())
        for item in ast.walk(body):
            if isinstance(item, ast.Name):
                if item.id in table:
                    reached.add(table[item.id])
                if item.id in functions:
                    pending.append(item.id)
    return frozenset(reached)


def package_closure(modules: frozenset[str] | set[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(the project's modules reachable from ``modules`` through imports, the tracked
    libraries any of them imports)."""
    own, libraries = set(), set()
    pending = list(modules)
    while pending:
        name = pending.pop()
        top = name.split(".")[0]
        if top != PACKAGE:
            if top in TRACKED_LIBRARIES:
                libraries.add(top)
            continue
        if name in own or not _is_module(name):
            continue
        own.add(name)
        pending.extend(module_imports(name))
    return frozenset(own), frozenset(libraries)


@lru_cache(maxsize=64)
def stage_code(functions: tuple[tuple[str, str], ...]) -> tuple[frozenset[str], dict[str, str]]:
    """A stage's code: the modules of its node functions and everything they reach (the
    import graph, function by function at the first step so that a node module shared by
    several stages does not tie them together), and the installed versions of the
    tracked libraries those modules import."""
    start: set[str] = set()
    for module_name, function_name in functions:
        start.add(module_name)
        start |= function_imports(module_name, function_name)
    own, libraries = package_closure(start - {m for m, _ in functions})
    own = own | {m for m, _ in functions}
    return own, {name: _library_version(name) for name in sorted(libraries)}


def _library_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    distribution = {"open_clip": "open_clip_torch"}.get(name, name)
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def stage_code_version(functions: tuple[tuple[str, str], ...]) -> str:
    """The hash of a stage's code (:func:`stage_code`) and of its tracked libraries'
    installed versions. The code part is kept on disk while no file of the package
    changed (:class:`CodeVersionStore`): parsing the import graph costs every ``kedro``
    command over a second otherwise."""
    store = CodeVersionStore.for_project()
    entry = store.get(functions)
    if entry is None:
        modules, libraries = stage_code(functions)
        entry = {"modules": code_version(modules), "libraries": sorted(libraries)}
        store.put(functions, entry)
    libraries = {name: _library_version(name) for name in entry["libraries"]}
    return hash_payload({"modules": entry["modules"], "libraries": libraries})


def package_signature() -> str:
    """Hash of the path, size and modification time of every source file of the package:
    any edit, checkout or reinstall changes it."""
    root = _package_root()
    files = []
    for path in sorted(root.rglob("*.py")):
        stat = path.stat()
        files.append([str(path.relative_to(root)), stat.st_mtime_ns, stat.st_size])
    return hash_payload({"root": str(root), "files": files})


class CodeVersionStore:
    """Stage code hashes (:func:`code_version` of a stage's modules, and which tracked
    libraries they import) in ``<data>/.giblet/code_versions.json``, valid for one
    :func:`package_signature`: a file of the package that changes drops them all.
    Unwritable or absent storage only costs the parse."""

    _loaded: dict[str, CodeVersionStore] = {}

    def __init__(self, path: Path | None, signature: str):
        self.path = path
        self.signature = signature
        self.entries: dict[str, dict] = {}
        if path is not None:
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError):
                stored = {}
            if isinstance(stored, dict) and stored.get("signature") == self.signature:
                self.entries = dict(stored.get("stages") or {})

    @classmethod
    def for_project(cls) -> CodeVersionStore:
        try:
            from giblet_kedro.paths import data_dir

            path: Path | None = data_dir() / ".giblet" / "code_versions.json"
        except Exception:  # outside a project: nothing kept
            path = None
        key, signature = str(path), package_signature()
        store = cls._loaded.get(key)
        if store is None or store.signature != signature:
            store = cls._loaded[key] = cls(path, signature)
        return store

    @staticmethod
    def _key(functions: tuple[tuple[str, str], ...]) -> str:
        return json.dumps(functions)

    def get(self, functions: tuple[tuple[str, str], ...]) -> dict | None:
        return self.entries.get(self._key(functions))

    def put(self, functions: tuple[tuple[str, str], ...], entry: dict) -> None:
        self.entries[self._key(functions)] = entry
        if self.path is None:
            return
        try:
            _replace_json(self.path, {"signature": self.signature, "stages": self.entries})
        except OSError:
            pass


def _replace_json(path: Path, data: Any, indent: int | None = None) -> None:
    """Write ``data`` as JSON to a temporary file beside ``path``, then rename it over
    ``path``: a reader sees the old file or the new one (for the small stores here; the
    project's outputs use :mod:`giblet_kedro.datasets.atomic`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=indent, sort_keys=True)
    os.replace(tmp, path)


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
        _replace_json(self.store, self._load(), indent=0)

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
