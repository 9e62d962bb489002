"""Where artifacts are published: one ``ArtifactStore`` over a local directory or an fsspec URL.

``LEGOLAS_ARTIFACTS`` names the root (``s3://bucket/prefix``, ``gs://bucket/prefix``, a local path);
unset, it is the output directory itself (``$LEGOLAS_HOME/output``), today's layout. Artifacts are
named by paths relative to the root (``demo/ensemble/champion.json``), so a manifest that names its
checkpoints this way serves from any copy of the root.

LEGOLAS keeps writing its files into a local working directory (the output directory: torch and
safetensors want local files); the store publishes what must outlive the machine:

* **objects** (pointers, manifests): one write each, a single PUT on S3/GCS and an atomic rename
  on a local root, so a reader sees the old object or the new one, never half of either;
* **records** (the decision log): appended to a JSON-lines file on a local root; one object per
  record on an object store, where an append does not exist;
* **trees** (a version's fold checkpoints, a run's reports): every file uploaded, then a
  completion marker (``.complete.json``, each file's size and SHA-256) written LAST. A reader
  treats a tree as present only when its marker exists, and a download is checked file by file
  against it, so a publisher killed mid-upload leaves a tree nobody reads and a re-run completes.

Three modes, one interface:

* *in place* (the default: the root is the working directory): nothing is copied, no marker is
  written, and a tree resolves to the working files, so local users pay nothing;
* *another local directory* (a mounted volume): trees are copied with a marker, read in place;
* *remote* (any other fsspec protocol): trees are uploaded, and downloaded on first use into
  ``<cache_dir>/<root hash>/<relative path>`` (verified), where later reads find them.

Credentials are never LEGOLAS settings: s3fs and gcsfs read the usual chain (``AWS_*`` variables
such as ``AWS_ENDPOINT_URL`` for an S3-compatible server, ``~/.aws``, instance roles, ``gcloud``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from legolas_ml.core.atomic_io import atomic_write

#: The completion marker of a published tree, written after every other file of the tree.
MARKER = ".complete.json"
_CHUNK = 8 * 1024 * 1024
#: Folders whose names start a tenant's artifacts: an absolute path written by an older LEGOLAS
#: (``/old/home/output/<tenant>/folds/...``) is re-rooted at the segment before them.
_TENANT_FOLDERS = ("folds", "ensemble", "datasets", "holdout", "splits")


class ArtifactNotPublishedError(FileNotFoundError):
    """A tree has no completion marker (never published, or its upload was interrupted)."""


class ArtifactIntegrityError(OSError):
    """A downloaded file does not match the size or SHA-256 its tree's marker recorded."""


def _relative(rel: str) -> str:
    """A clean POSIX path inside the root; absolute paths and ``..`` are refused."""
    path = PurePosixPath(str(rel).replace(os.sep, "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"an artifact path must be relative to the artifacts root, without '..'; got {rel!r}")
    return path.as_posix()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    """Artifacts under one root, addressed by paths relative to it.

    Args:
        root: a local directory or an fsspec URL (``s3://bucket/prefix``).
        working_dir: the local directory LEGOLAS writes its files into before publishing them;
            a root equal to it is used in place.
        cache_dir: where trees of a remote root are downloaded (default ``<working_dir>/../cache``).
        storage_options: passed to the fsspec filesystem (tests: an endpoint).

    Example:
        >>> store = ArtifactStore("s3://models/legolas", working_dir="var/output")   # doctest: +SKIP
        >>> store.write_json("demo/ensemble/champion.json", {"version": "abc"})       # doctest: +SKIP
    """

    def __init__(
        self, root: str | Path, *, working_dir: str | Path, cache_dir: str | Path | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        root = str(root)
        self.working_dir = Path(working_dir).expanduser().resolve()
        protocol, _, rest = root.partition("://") if "://" in root else ("file", "", root)
        if protocol in ("file", "local"):
            self.protocol = "file"
            self.local_root: Path | None = Path(rest).expanduser().resolve()
            self.root_url = str(self.local_root)
            self.fs = None
            self._base = ""
        else:
            import fsspec  # only a remote root needs it (s3fs, gcsfs bring it)

            if protocol not in fsspec.available_protocols():
                raise ValueError(
                    f"LEGOLAS_ARTIFACTS (training.artifacts_root in Dagster) must be a local path or a URL of an fsspec protocol "
                    f"(s3://, gs://, az://, ...), got {root!r}"
                )
            self.protocol = protocol
            self.local_root = None
            self.root_url = root.rstrip("/")
            options = {"use_listings_cache": False, **(storage_options or {})}  # other writers' objects must be seen
            try:
                self.fs, self._base = fsspec.core.url_to_fs(self.root_url, **options)
            except ImportError as exc:
                raise ValueError(
                    f"LEGOLAS_ARTIFACTS={root!r} needs the fsspec driver of {protocol!r} ({exc}); "
                    f"`pip install -e '.[storage]'` installs s3fs; gs:// needs gcsfs"
                ) from None
            self._base = self._base.rstrip("/")
        self.in_place = self.local_root is not None and self.local_root == self.working_dir
        cache = Path(cache_dir) if cache_dir is not None else self.working_dir.parent / "cache"
        self.cache_root = cache.expanduser().resolve() / "artifacts" / hashlib.sha256(self.root_url.encode()).hexdigest()[:12]

    def __repr__(self) -> str:
        mode = "in place" if self.in_place else ("local" if self.local_root else "remote")
        return f"ArtifactStore({self.root_url!r}, {mode})"

    @property
    def is_remote(self) -> bool:
        return self.local_root is None

    # --- names ---
    def location(self, rel: str) -> str:
        """What a person is shown for ``rel``: a local path or the object's URL."""
        rel = _relative(rel)
        return str(self.local_root / rel) if self.local_root else f"{self.root_url}/{rel}"

    def _remote(self, rel: str) -> str:
        return f"{self._base}/{_relative(rel)}"

    def _local(self, rel: str) -> Path:
        assert self.local_root is not None, "a local path of a remote root was asked for"
        return self.local_root / _relative(rel)

    def relative(self, path: str | Path) -> str | None:
        """``path`` (a working file or a file under a local root) as a path relative to the root,
        or ``None`` when it lies outside both."""
        resolved = Path(path).expanduser().resolve()
        for base in (self.working_dir, self.local_root, self.cache_root):
            if base is not None and resolved.is_relative_to(base):
                return resolved.relative_to(base).as_posix()
        return None

    # --- objects: one write each ---
    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write one object: an atomic rename on a local root, a single PUT on an object store."""
        if self.local_root is not None:
            atomic_write(self._local(rel), lambda tmp: tmp.write_bytes(data))
        else:
            self.fs.pipe_file(self._remote(rel), data)
        return self.location(rel)

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, payload: Any) -> str:
        return self.write_text(rel, json.dumps(payload, indent=2, sort_keys=True, default=str))

    def read_bytes(self, rel: str) -> bytes:
        """The object's content.

        Raises:
            FileNotFoundError: naming the object's location.
        """
        try:
            if self.local_root is not None:
                return self._local(rel).read_bytes()
            return self.fs.cat_file(self._remote(rel))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.location(rel)} does not exist") from None

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_text(rel))

    def exists(self, rel: str) -> bool:
        if self.local_root is not None:
            return self._local(rel).exists()
        return self.fs.exists(self._remote(rel))

    def glob(self, pattern: str) -> list[str]:
        """Relative paths of the objects matching ``pattern`` (``*`` within one folder), sorted."""
        if self.local_root is not None:
            return sorted(p.relative_to(self.local_root).as_posix() for p in self.local_root.glob(_relative(pattern)))
        prefix = self._base.split("://", 1)[-1] + "/"
        return sorted(str(p).split("://", 1)[-1][len(prefix):] for p in self.fs.glob(self._remote(pattern)))

    def modified(self, rel: str) -> float:
        """When ``rel`` was last written (seconds since the epoch)."""
        if self.local_root is not None:
            return self._local(rel).stat().st_mtime
        info = self.fs.info(self._remote(rel))
        stamp = info.get("LastModified") or info.get("mtime") or info.get("updated") or 0
        return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp or 0)

    def delete(self, rel: str) -> None:
        """Delete one object; a missing one is not an error."""
        if self.local_root is not None:
            self._local(rel).unlink(missing_ok=True)
        elif self.fs.exists(self._remote(rel)):
            self.fs.rm_file(self._remote(rel))

    def delete_tree(self, rel: str) -> None:
        """Delete a tree: its marker first, so no reader takes a half-deleted tree for a whole one."""
        self.delete(f"{_relative(rel)}/{MARKER}")
        if self.local_root is not None:
            shutil.rmtree(self._local(rel), ignore_errors=True)
        elif self.fs.exists(self._remote(rel)):
            self.fs.rm(self._remote(rel), recursive=True)
        shutil.rmtree(self.cache_root / _relative(rel), ignore_errors=True)

    # --- records: an append-only log ---
    def append_record(self, rel: str, record: dict[str, Any]) -> dict[str, Any]:
        """Append ``record`` to the log ``rel`` (``.../decisions.jsonl``).

        A local root appends one fsynced line (a torn last line from a crash is ended first); an
        object store, where an append does not exist, gets one object per record under
        ``<rel without .jsonl>/``, named by time so that a listing is the order of the appends.
        """
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        if self.local_root is None:
            name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
            self.fs.pipe_file(f"{self._remote(_records_dir(rel))}/{name}", line.encode("utf-8"))
            return record
        path = self._local(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as handle:
            if handle.seek(0, os.SEEK_END):
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    line = "\n" + line
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        return record

    def records(self, rel: str) -> list[dict[str, Any]]:
        """The log's records in append order; torn or unreadable ones are skipped."""
        if self.local_root is None:
            directory = self._remote(_records_dir(rel))
            names = sorted(self.fs.ls(directory, detail=False)) if self.fs.exists(directory) else []
            lines = [self.fs.cat_file(name).decode("utf-8") for name in names]
        else:
            path = self._local(rel)
            lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def records_location(self, rel: str) -> str:
        return self.location(rel) if self.local_root is not None else self.location(_records_dir(rel)) + "/"

    # --- trees: files, then the marker ---
    def publish_tree(self, rel: str) -> dict[str, Any] | None:
        """Publish the working directory ``<working_dir>/<rel>``: every file, then its marker.

        In place this does nothing (the files are already where readers look). Returns the marker
        written, ``None`` in place.

        Raises:
            FileNotFoundError: if the working directory does not exist.
        """
        if self.in_place:  # before the path check: in place there is nothing to name
            return None
        rel = _relative(rel)
        source = self.working_dir / rel
        if not source.is_dir():
            raise FileNotFoundError(f"cannot publish {source}: no such directory")
        files: dict[str, dict[str, Any]] = {}
        for path in sorted(p for p in source.rglob("*") if p.is_file() and p.name != MARKER and not p.name.endswith(".tmp")):
            name = path.relative_to(source).as_posix()
            files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
            self._upload_file(path, f"{rel}/{name}")
        marker = {"files": files, "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.write_json(f"{rel}/{MARKER}", marker)  # LAST: the tree exists for readers from here on
        if self.is_remote:
            self._seed_cache(source, rel, marker)
        return marker

    def _upload_file(self, path: Path, rel: str) -> None:
        if self.local_root is not None:
            atomic_write(self._local(rel), lambda tmp: shutil.copyfile(path, tmp))
        else:
            self.fs.put_file(str(path), self._remote(rel))  # a multipart upload is visible only once complete

    def _seed_cache(self, source: Path, rel: str, marker: dict[str, Any]) -> None:
        """The publisher's own copy is the cache's: hard links, so a later read downloads nothing."""
        target = self.cache_root / rel
        for name in marker["files"]:
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.unlink(missing_ok=True)
            try:
                os.link(source / name, destination)
            except OSError:  # another filesystem: a copy
                shutil.copyfile(source / name, destination)
        atomic_write(target / MARKER, lambda tmp: tmp.write_text(json.dumps(marker, sort_keys=True)))

    def tree_published(self, rel: str) -> bool:
        """Whether the tree's marker exists (in place: whether its directory does)."""
        if self.in_place:
            return (self.working_dir / _relative(rel)).is_dir()
        return self.exists(f"{_relative(rel)}/{MARKER}")

    def fetch_tree(self, rel: str) -> Path:
        """A local directory holding the published tree ``rel``.

        In place, the working directory; on another local root, the root's directory once its
        marker exists; on a remote root, the cache's copy, downloaded (each file verified against
        the marker) unless the cache holds this marker already.

        Raises:
            ArtifactNotPublishedError: the tree has no marker (never published, or interrupted).
            ArtifactIntegrityError: a downloaded file does not match the marker.
        """
        rel = _relative(rel)
        if self.in_place:
            return self.working_dir / rel
        try:
            marker_bytes = self.read_bytes(f"{rel}/{MARKER}")
        except FileNotFoundError:
            raise ArtifactNotPublishedError(
                f"{self.location(rel)} has no completion marker {MARKER}: it was never published or its upload was "
                "interrupted; re-run the step that wrote it"
            ) from None
        if self.local_root is not None:
            return self.local_root / rel
        marker = json.loads(marker_bytes)
        target = self.cache_root / rel
        cached = target / MARKER
        if cached.exists() and json.loads(cached.read_text()) == marker:
            return target
        for name, expected in marker["files"].items():
            self._download_file(f"{rel}/{name}", target / name, expected)
        atomic_write(cached, lambda tmp: tmp.write_text(json.dumps(marker, sort_keys=True)))
        return target

    def _download_file(self, rel: str, destination: Path, expected: dict[str, Any]) -> None:
        def download(tmp: Path) -> None:
            digest, size = hashlib.sha256(), 0
            with self.fs.open(self._remote(rel), "rb") as source, open(tmp, "wb") as sink:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    sink.write(chunk)
            if size != expected["size"] or digest.hexdigest() != expected["sha256"]:
                raise ArtifactIntegrityError(
                    f"{self.location(rel)}: {size} bytes with sha256 {digest.hexdigest()[:12]}... but its tree's marker "
                    f"records {expected['size']} bytes with sha256 {expected['sha256'][:12]}...; not cached"
                )

        atomic_write(destination, download)

    def resolve(self, entry: str | Path) -> Path:
        """A local path for an artifact named in a manifest: relative to the root (its tree fetched),
        or an absolute path written by an older LEGOLAS.

        An absolute path that exists is used as it is; one that does not (a home copied or
        restored elsewhere) is re-rooted at its tenant's folder (``.../<tenant>/folds/...``) when
        the root holds it. Otherwise it is returned unchanged, and the caller reports it missing.
        """
        entry = str(entry)
        if not os.path.isabs(entry):
            rel = _relative(entry)
            if self.in_place:  # nothing to fetch: the file is where it was written
                return self.working_dir / rel
            return self.fetch_tree(str(PurePosixPath(rel).parent)) / PurePosixPath(rel).name
        if Path(entry).exists():
            return Path(entry)
        parts = PurePosixPath(Path(entry).as_posix()).parts
        for i in range(len(parts) - 1, 0, -1):
            if parts[i] in _TENANT_FOLDERS:
                rel = "/".join(parts[i - 1:])
                try:
                    return self.resolve(rel)
                except (FileNotFoundError, ValueError):
                    break
        return Path(entry)


def _records_dir(rel: str) -> str:
    rel = _relative(rel)
    return rel[: -len(".jsonl")] if rel.endswith(".jsonl") else rel + ".d"


def open_store(working_dir: str | Path, root: str | None = None) -> ArtifactStore:
    """The store of ``working_dir``: rooted at ``root`` (``settings.artifacts_root()``, read by the
    caller: this ground-floor module reads no setting), else the working directory itself, in place.

    The cache lives beside the working directory (``$LEGOLAS_HOME/cache`` for the default output
    directory), so a fresh home downloads what it reads once.
    """
    return ArtifactStore(root or working_dir, working_dir=working_dir)
