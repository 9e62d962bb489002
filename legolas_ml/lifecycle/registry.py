"""The tenant's model registry: ensemble versions, the champion in service, the decision history.

Words from MLflow's model registry: every trained ensemble is a *version* (its id is the training
key: data version + split + config), the *candidate* is the newest version awaiting a decision,
the *champion* is the version in service. On disk, under ``<output>/<tenant>/ensemble/``::

    versions/<version>/manifest.json   one per trained ensemble, never rewritten once decided
    champion.json                      the pointer to the version in service, the stack of champions
                                       before it, and the record of the decision that put it there
    challenger.json                    the candidate waiting for holdout evidence, if any, likewise
    decisions.jsonl                    append-only: every promotion, rejection, challenger and rollback

Everything here goes through the tenant's ``ArtifactStore`` (``legolas_ml.core.storage``): under
``LEGOLAS_ARTIFACTS`` (``s3://...``) the pointer is one object PUT, the log is one object per
record (``decisions/``; an object store cannot append), and a version's manifest is written only
after the trees it names (its fold checkpoints, its run's directory) are published with their
completion markers. Manifests name those files relative to the artifacts root; ``manifest()``
returns them as local paths (fetched into the cache from a remote root), and an older manifest's
absolute paths still load.

Only the pointer says what is in service. A decision that moves it is committed by one atomic write
of the pointer, which carries the decision's record; the log is appended after, and a record the
log lacks (a crash in between) is appended by the next ``history()``: the record and the pointer
never disagree. Rollback walks the stack of champions back (v3 -> v2 -> v1) and says where it stops. A missing or damaged pointer, manifest or checkpoint of the champion raises
``ChampionUnavailableError`` naming the file and the command that fixes it: it is never read as
"no model" (which would silently switch the quality gate to first-training mode).
"""

from __future__ import annotations

import getpass
import json
import shutil
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from legolas_ml.core.atomic_io import write_json_atomic
from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.core.storage import ArtifactIntegrityError
from legolas_ml.core.review_cursor import ReviewCursor

PROMOTED, REJECTED, ROLLED_BACK, CHALLENGER, KEPT = "promoted", "rejected", "rolled_back", "challenger", "kept"
#: Records that decided a training: the reviews it read are consumed. ``kept``: a training whose data
#: was the champion's own (new reviews all landed in the holdout) keeps it serving.
DECIDED = (PROMOTED, REJECTED, KEPT)


class ChampionUnavailableError(RuntimeError):
    """The tenant has a champion, but its pointer, manifest or checkpoints cannot be used."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def default_actor(via: str) -> str:
    """Who did it: the OS user and the way (``cli``, ``dagster run <id>``, ...)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user} via {via}"


class ModelRegistry:
    """Versions, champion and decisions of one tenant.

    Args:
        artifacts: the tenant's artifact paths.

    Example:
        >>> registry = ModelRegistry(TenantArtifacts("var/output", "demo"))   # doctest: +SKIP
        >>> registry.champion()["version"], [r["action"] for r in registry.history()]  # doctest: +SKIP
    """

    def __init__(self, artifacts: TenantArtifacts) -> None:
        self.artifacts = artifacts
        self.store = artifacts.store
        self.root = artifacts.root / "ensemble"  # the working copy; the store's copy is under `self.prefix`
        self.prefix = f"{artifacts.tenant}/ensemble"

    # --- names in the store ---
    def _rel(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    @property
    def decisions_location(self) -> str:
        """Where the decision log is: a file, or a folder of one object per record on an object store."""
        return self.store.records_location(self._rel("decisions.jsonl"))

    def pointer(self) -> dict[str, Any] | None:
        """The champion pointer as stored (``version``, ``since``, ``stack``, ``record``), or ``None``."""
        return self._pointer(self._rel("champion.json"))

    # --- local paths (the working copy) ---
    @property
    def pointer_path(self) -> Path:
        return self.root / "champion.json"

    @property
    def decisions_path(self) -> Path:
        return self.root / "decisions.jsonl"

    @property
    def challenger_path(self) -> Path:
        return self.root / "challenger.json"

    def version_dir(self, version: str) -> Path:
        return self.root / "versions" / version

    def manifest_path(self, version: str) -> Path:
        return self.version_dir(version) / "manifest.json"

    def run_dir(self, version: str, run_id: str) -> Path:
        """Where one run writes a version's artifacts (report, plots): never overwritten by another run."""
        return self.version_dir(version) / "runs" / run_id

    def latest_report(self, version: str) -> Path | str | None:
        """The version's newest explainability report (``runs/<run_id>/explainability/report.html``):
        a path on a local root, a URL on an object store; ``None`` when there is none."""
        reports = self.store.glob(self._rel("versions", version, "runs", "*", "explainability", "report.html"))
        if not reports:
            return None
        newest = max(reports, key=lambda rel: (self.store.modified(rel), rel))
        location = self.store.location(newest)
        return location if self.store.is_remote else Path(location)

    def publish_run(self, version: str, run_id: str) -> None:
        """Publish a run's directory of ``version`` (report, plots, baseline) after it changed."""
        self.store.publish_tree(self.artifacts.relative(self.run_dir(version, run_id)))

    # --- versions ---
    def write_candidate(self, manifest: dict[str, Any]) -> Path:
        """Record a trained ensemble as a version (a candidate until decided).

        The trees its files live in (the folds' directory, the baseline's run directory) are
        published first, the manifest last, naming those files relative to the artifacts root: a
        version is listed only once everything it names can be read.

        Returns:
            The manifest's path in the working copy (written there too when the root is elsewhere).

        Raises:
            ValueError: if ``version`` or ``checkpoints`` is missing, or a file lies outside the output directory.
        """
        if not manifest.get("version") or not manifest.get("checkpoints"):
            raise ValueError(f"a candidate manifest needs 'version' and 'checkpoints', got keys {sorted(manifest)}")
        stored = dict(manifest)
        stored["checkpoints"] = [self._stored_path(p) for p in manifest["checkpoints"]]
        if isinstance(manifest.get("baseline"), dict) and manifest["baseline"].get("path"):
            stored["baseline"] = {**manifest["baseline"], "path": self._stored_path(manifest["baseline"]["path"])}
        named = stored["checkpoints"] + ([stored["baseline"]["path"]] if "path" in (stored.get("baseline") or {}) else [])
        for tree in sorted({PurePosixPath(rel).parent.as_posix() for rel in named if not Path(rel).is_absolute()}):
            self.store.publish_tree(tree)
        self.store.write_json(self._rel("versions", manifest["version"], "manifest.json"), stored)
        path = self.manifest_path(manifest["version"])
        if not self.store.in_place:  # the working copy beside the run's files (the report's folder, MLflow's artifact)
            write_json_atomic(path, stored)
        return path

    def _stored_path(self, path: str | Path) -> str:
        """How a manifest names a file: relative to the artifacts root. A file outside the output
        directory (an older layout) keeps its absolute path while the root is the output directory
        itself; no other root could serve it."""
        rel = self.store.relative(path) if Path(path).is_absolute() else str(path)
        if rel is not None:
            return rel
        if self.store.in_place:
            return str(path)
        return self.artifacts.relative(path)  # raises, naming the file and the output directory

    def manifest(self, version: str, fetch: bool = True) -> dict[str, Any]:
        """The manifest of ``version`` with its files as local paths.

        Args:
            version: the version's id.
            fetch: resolve the files named relative to the root into local paths (downloading them
                from a remote root once); ``False`` leaves them as stored.

        Raises:
            ValueError: the version does not exist, naming the known ones.
            ChampionUnavailableError: the manifest is unreadable, or its files were never fully published.
        """
        rel = self._rel("versions", version, "manifest.json")
        try:
            manifest = json.loads(self.store.read_text(rel))
        except FileNotFoundError:
            known = self.versions()
            raise ValueError(f"version {version!r} of tenant {self.artifacts.tenant!r} does not exist; known versions: {known}") from None
        except (OSError, ValueError) as exc:
            raise ChampionUnavailableError(f"ensemble manifest {self.store.location(rel)} is unreadable: {exc}") from None
        if not isinstance(manifest, dict) or "checkpoints" not in manifest:
            raise ChampionUnavailableError(f"ensemble manifest {self.store.location(rel)} lacks 'checkpoints'")
        if not fetch:
            return manifest
        try:
            manifest["checkpoints"] = [str(self.store.resolve(p)) for p in manifest["checkpoints"]]
            if isinstance(manifest.get("baseline"), dict) and manifest["baseline"].get("path"):
                manifest["baseline"] = {**manifest["baseline"], "path": str(self.store.resolve(manifest["baseline"]["path"]))}
        except (FileNotFoundError, ArtifactIntegrityError) as exc:
            raise ChampionUnavailableError(f"the files of version {version} cannot be read: {exc}") from None
        return manifest

    def versions(self) -> list[str]:
        return sorted(rel.split("/")[-2] for rel in self.store.glob(self._rel("versions", "*", "manifest.json")))

    # --- the champion ---
    def champion_version(self) -> str | None:
        """The version in service, ``None`` when the tenant never promoted one.

        Raises:
            ChampionUnavailableError: if the pointer exists but cannot be read.
        """
        pointer = self._rel("champion.json")
        if not self.store.exists(pointer):
            return self._adopt_legacy_manifest()
        try:
            version = json.loads(self.store.read_text(pointer))["version"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ChampionUnavailableError(
                f"the champion pointer {self.store.location(pointer)} is damaged ({exc}); {self._fix_hint()}"
            ) from None
        if not isinstance(version, str) or not version:
            raise ChampionUnavailableError(f"the champion pointer {self.store.location(pointer)} names no version; {self._fix_hint()}")
        return version

    def _adopt_legacy_manifest(self) -> str | None:
        """Before the registry, ``ensemble/ensemble.json`` was the model in service: adopt it as a
        version rather than read its absence of a pointer as "no model" (first-training mode)."""
        legacy = self._rel("ensemble.json")
        if not self.store.exists(legacy):
            return None
        try:
            manifest = json.loads(self.store.read_text(legacy))
            version = f"legacy-{manifest['data_version']}"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ChampionUnavailableError(f"the ensemble manifest {legacy} is damaged ({exc}); {self._fix_hint()}") from None
        self.write_candidate({**manifest, "version": version})
        record = {
            "id": uuid.uuid4().hex, "action": PROMOTED, "version": version, "previous_champion": None,
            "actor": default_actor("legolas upgrade"), "reason": f"adopted the pre-registry manifest {legacy}", "at": _now(),
            "reviews_cursor": manifest.get("reviews_cursor"), "data_version": manifest.get("data_version"),
        }
        # The pointer before the rename: a crash in between leaves a champion, never none.
        self.store.write_json(self._rel("champion.json"), {"version": version, "since": record["at"], "stack": [version], "record": record})
        self._complete_journal()
        self.store.write_bytes(self._rel("ensemble.json.adopted"), self.store.read_bytes(legacy))
        self.store.delete(legacy)
        return version

    def champion(self, verify_weights: bool = False) -> dict[str, Any] | None:
        """The manifest of the ensemble in service, verified; ``None`` when there is none.

        Args:
            verify_weights: also recompute every checkpoint's SHA-256 (seconds for large models).

        Raises:
            ChampionUnavailableError: naming the damaged file and the command that fixes it.
        """
        version = self.champion_version()
        if version is None:
            return None
        try:
            manifest = self.manifest(version)
        except ValueError:
            raise ChampionUnavailableError(
                f"the champion {version} has no manifest at {self.manifest_path(version)}; {self._fix_hint()}"
            ) from None
        except ChampionUnavailableError as exc:
            raise ChampionUnavailableError(f"{exc}; {self._fix_hint()}") from None
        self._verify_checkpoints(manifest, verify_weights)
        return manifest

    def _verify_checkpoints(self, manifest: dict[str, Any], verify_weights: bool) -> None:
        from legolas_ml.training.checkpoint import CheckpointError, load_checkpoint, read_sidecar  # torch only when needed

        for path, expected in zip(manifest["checkpoints"], manifest.get("sha256") or [None] * len(manifest["checkpoints"])):
            try:
                if verify_weights:
                    load_checkpoint(path)
                sidecar = read_sidecar(path)
                if not Path(path).exists():
                    raise CheckpointError(f"checkpoint weights {path} are missing")
            except CheckpointError as exc:
                raise ChampionUnavailableError(f"the champion {manifest.get('version')} is damaged: {exc}; {self._fix_hint()}") from None
            if expected is not None and sidecar["sha256"] != expected:
                raise ChampionUnavailableError(
                    f"the champion {manifest.get('version')} is damaged: checkpoint {path} is not the one the manifest "
                    f"recorded (sha256 {sidecar['sha256'][:12]}... vs {str(expected)[:12]}...); {self._fix_hint()}"
                )

    def _fix_hint(self) -> str:
        tenant = self.artifacts.tenant
        return (
            f"fix it with `legolas rollback --tenant {tenant}` (the previous champion) or "
            f"`legolas promote --tenant {tenant} --version V` (versions: `legolas versions --tenant {tenant}`)"
        )

    # --- decisions ---
    def _pointer(self, rel: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.store.read_text(rel))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # champion_version() reports a damaged champion pointer; a challenger's is dropped
        return data if isinstance(data, dict) else None

    def _log(self) -> list[dict[str, Any]]:
        return self.store.records(self._rel("decisions.jsonl"))

    def history(self) -> list[dict[str, Any]]:
        """Every decision, oldest first. A torn line (a crash mid-append) is skipped; a decision
        committed by a pointer write whose log append never happened is appended first (the journal);
        a record appended twice (two readers completing the journal at once) is read once."""
        self._complete_journal()
        records, seen = [], set()
        for record in self._log():
            if record.get("id") in seen:
                continue
            if record.get("id"):
                seen.add(record["id"])
            records.append(record)
        return records

    def _complete_journal(self) -> None:
        """Append the records the pointers carry and the log lacks, before anything else is appended:
        the log keeps the order in which decisions were committed."""
        committed = [(self._pointer(path) or {}).get("record") for path in (self._rel("champion.json"), self._rel("challenger.json"))]
        committed = [r for r in committed if isinstance(r, dict) and r.get("id")]
        if not committed:
            return
        known = {r.get("id") for r in self._log()}
        for record in sorted((r for r in committed if r["id"] not in known), key=lambda r: str(r.get("at"))):
            self._write_line(record)

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        self._complete_journal()
        return self._write_line(record)

    def _write_line(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.store.append_record(self._rel("decisions.jsonl"), record)

    def _previous_champion(self) -> str | None:
        """The version in service for a record; a damaged pointer reads as the top of the logged stack,
        so `legolas promote` and `legolas rollback` can still repair it."""
        try:
            return self.champion_version()
        except ChampionUnavailableError:
            stack = self._replayed_stack()
            return stack[-1] if stack else None

    def _record(self, action: str, version: str, *, actor: str, reason: str, **extra: Any) -> dict[str, Any]:
        manifest = self.manifest(version, fetch=False)  # its numbers only
        return {
            "id": uuid.uuid4().hex,
            "action": action,
            "version": version,
            "previous_champion": self._previous_champion(),
            "actor": actor,
            "reason": reason,
            "at": _now(),
            "reviews_cursor": manifest.get("reviews_cursor"),
            "data_version": manifest.get("data_version"),
            "holdout_share": (manifest.get("holdout") or {}).get("share"),
            # Human-labelled test sessions only; the mixed score (mostly LLM agreement at first) apart.
            "test_balanced_accuracy_human": (manifest.get("test_metrics_human") or {}).get("balanced_accuracy"),
            "test_balanced_accuracy_mixed": (manifest.get("test_metrics") or {}).get("balanced_accuracy"),
            **extra,
        }

    def champion_stack(self) -> list[str]:
        """The champions in service, oldest first, the current one last: what rollbacks walk back.

        Read from the pointer; a pointer written before the stack existed, or a damaged one, is
        replayed from the log (a promotion pushes, a rollback pops).
        """
        pointer = self.pointer() or {}
        if isinstance(pointer.get("stack"), list) and pointer.get("version"):
            return [str(v) for v in pointer["stack"]]
        stack = self._replayed_stack()
        current = pointer.get("version")
        if isinstance(current, str) and current and (not stack or stack[-1] != current):
            stack = [v for v in stack if v != current] + [current]
        return stack

    def _replayed_stack(self) -> list[str]:
        stack: list[str] = []
        for record in self._log():
            version = record.get("version")
            if record.get("action") == PROMOTED and version:
                stack = [v for v in stack if v != version] + [version]
            elif record.get("action") == ROLLED_BACK and version:
                while stack and stack[-1] != version:
                    stack.pop()
                if not stack:
                    stack.append(version)
        return stack

    def _commit_champion(self, record: dict[str, Any], stack: list[str]) -> dict[str, Any]:
        """Switch the pointer (the commit point, one atomic write carrying the record), then log it.

        A challenger waiting against the old champion is decided too: it was never compared with
        the new one, and a look would otherwise pit an older candidate against a newer champion.
        """
        challenger = self.challenger()
        self.store.write_json(self._rel("champion.json"), {"version": record["version"], "since": record["at"], "stack": stack, "record": record})
        self._complete_journal()  # logs the record the pointer now carries
        if challenger is not None and challenger["version"] == record["version"]:
            self.store.delete(self._rel("challenger.json"))
        elif challenger is not None:
            self.reject(challenger["version"], actor=record["actor"],
                        reason=f"superseded: the champion changed to {record['version']} ({record['action']}) while it waited")
        return record

    def promote(self, version: str, *, actor: str, reason: str, **extra: Any) -> dict[str, Any]:
        """Make ``version`` the champion and record who, when, why and both versions."""
        self._verify_checkpoints(self.manifest(version), verify_weights=False)
        stack = self.champion_stack()
        record = self._record(PROMOTED, version, actor=actor, reason=reason, **extra)
        # A version promoted again moves to the top: the stack holds each version once.
        return self._commit_champion(record, [v for v in stack if v != version] + [version])

    def reject(self, version: str, *, actor: str, reason: str, **extra: Any) -> dict[str, Any]:
        """Record that ``version`` is not promoted (its files stay on disk with the reason); a
        challenger rejected stops waiting."""
        record = self._append(self._record(REJECTED, version, actor=actor, reason=reason, **extra))
        challenger = self.challenger()
        if challenger is not None and challenger["version"] == version:
            self.store.delete(self._rel("challenger.json"))
        return record

    def keep_champion(self, *, actor: str, reason: str, **extra: Any) -> dict[str, Any]:
        """Record that a training reproduced the champion itself: the reviews it read are consumed."""
        version = self.champion_version()
        if version is None:
            raise ValueError(f"tenant {self.artifacts.tenant!r} has no champion to keep")
        return self._append(self._record(KEPT, version, actor=actor, reason=reason, **extra))

    def wait_as_challenger(self, version: str, *, actor: str, reason: str, holdout_n: int, **extra: Any) -> dict[str, Any]:
        """Keep ``version`` as the tenant's challenger until the holdout can decide it.

        A different challenger waiting before is rejected first, with the reason that this one
        replaced it. Its reviews are not consumed until it is decided (``consumed_reviews``).
        """
        earlier = self.challenger()
        if earlier is not None and earlier["version"] != version:
            self.reject(earlier["version"], actor=actor, reason=f"replaced as challenger by the newer candidate {version}",
                        replaced_by=version)
        record = self._record(CHALLENGER, version, actor=actor, reason=reason, holdout_n=holdout_n, **extra)
        since = earlier["since"] if earlier is not None and earlier["version"] == version else record["at"]
        self.store.write_json(self._rel("challenger.json"), {"version": version, "since": since, "holdout_n": holdout_n, "record": record})
        self._complete_journal()  # logs the record the pointer now carries
        return record

    def challenger(self) -> dict[str, Any] | None:
        """The waiting challenger ``{"version", "since", "holdout_n", "record"}``, or ``None``.

        A challenger pointer left behind by a crash after its version was decided is ignored.
        """
        pointer = self._pointer(self._rel("challenger.json"))
        if not pointer or not pointer.get("version") or not isinstance(pointer.get("record"), dict):
            return None
        version = pointer["version"]
        if (self.pointer() or {}).get("version") == version:
            return None
        for record in reversed(self._log()):
            if record.get("id") == pointer["record"].get("id"):
                break
            if record.get("version") == version and record.get("action") in (PROMOTED, REJECTED):
                return None
        return pointer

    def decision_for(self, version: str) -> dict[str, Any] | None:
        """The latest promotion, rejection or challenger record of ``version``, if any."""
        for record in reversed(self.history()):
            if record.get("version") == version and record.get("action") in (PROMOTED, REJECTED, CHALLENGER):
                return record
        return None

    def taken_out_of_service(self, version: str) -> dict[str, Any] | None:
        """The record that took ``version`` out of service after its latest promotion (a rollback, or
        the promotion of another version), if any: a re-run never re-promotes it unless an operator
        asks (``legolas promote``)."""
        for record in reversed(self.history()):
            if record.get("action") in (PROMOTED, ROLLED_BACK) and record.get("previous_champion") == version \
                    and record.get("version") != version:
                return record
            if record.get("action") == PROMOTED and record.get("version") == version:
                return None
        return None

    def rollback(self, *, actor: str, reason: str = "rollback requested") -> dict[str, Any]:
        """Put back the champion that was in service before the current one: the stack of champions
        is walked back (v3 -> v2 -> v1), skipping any whose files are gone (said in the record).

        Raises:
            ValueError: if there is no earlier champion to return to, naming the stack.
        """
        stack = self.champion_stack()
        current = self._previous_champion()
        if current is None:
            raise ValueError(f"tenant {self.artifacts.tenant!r} has no champion to roll back")
        if not stack or stack[-1] != current:
            stack = [v for v in stack if v != current] + [current]
        below, skipped = stack[:-1], []
        while below:
            version = below[-1]
            try:
                self._verify_checkpoints(self.manifest(version), verify_weights=False)
            except (ValueError, ChampionUnavailableError):
                skipped.append(below.pop())
                continue
            record = self._record(
                ROLLED_BACK, version, actor=actor, reason=reason, rolled_back_from=current,
                skipped_unavailable=skipped, earlier_champions=below[:-1],
            )
            return self._commit_champion(record, below)
        gone = f"; skipped with missing files: {skipped}" if skipped else ""
        raise ValueError(
            f"tenant {self.artifacts.tenant!r}: {current} is the first champion in the stack {stack}, "
            f"there is no earlier champion to roll back to{gone}"
        )

    def consumed_reviews(self) -> ReviewCursor | None:
        """The newest review that a decided training (promoted or rejected) has read.

        Reviews are consumed only once a run that trained on them reached a decision, never when a
        run is requested; a waiting challenger's reviews are not consumed (``trained_reviews``).
        """
        return self._newest_cursor(DECIDED)

    def trained_reviews(self) -> ReviewCursor | None:
        """The newest review any recorded training read, a waiting challenger's included: reviews
        after it are new to every candidate, and what a retraining would add."""
        return self._newest_cursor((*DECIDED, CHALLENGER))

    def champion_reviews(self) -> ReviewCursor | None:
        """The newest review the model in service learned from (its manifest's cursor)."""
        version = self.champion_version()
        if version is None:
            return None
        try:
            return ReviewCursor.parse(self.manifest(version).get("reviews_cursor"))
        except ValueError:
            return None

    def read_reviews(self) -> ReviewCursor | None:
        """The newest review any recorded decision read, for training or in the holdout."""
        return self._newest_cursor((PROMOTED, REJECTED, KEPT, CHALLENGER), fields=("reviews_cursor", "holdout_reviews_cursor"))

    def _newest_cursor(self, actions: tuple[str, ...], fields: tuple[str, ...] = ("reviews_cursor",)) -> ReviewCursor | None:
        cursors = []
        for record in self.history():
            if record.get("action") not in actions:
                continue
            for name in fields:
                try:
                    cursor = ReviewCursor.parse(record.get(name))
                except ValueError:
                    continue
                if cursor is not None:
                    cursors.append(cursor)
        return max(cursors) if cursors else None

    # --- retention ---
    def prune(self, keep_decided: int = 5, keep: set[str] | None = None) -> list[str]:
        """Delete versions (manifest dir and fold checkpoints) no longer needed; return what was deleted.

        Kept: the champion, ``keep`` (e.g. the current candidate), every version of the last
        ``keep_decided`` decisions (recent rejected candidates stay inspectable) and every version
        promoted within the last ``keep_decided`` promotions (rollback targets). A version never
        decided is kept too: it may be a candidate whose run is still going.
        """
        if keep_decided < 1:
            raise ValueError(f"keep_decided must be >= 1, got {keep_decided!r}")
        history = self.history()
        decided = [r for r in history if r.get("action") in (PROMOTED, REJECTED, ROLLED_BACK)]
        promoted = [r["version"] for r in decided if r["action"] in (PROMOTED, ROLLED_BACK)]
        keep_versions = set(keep or ()) | {r["version"] for r in decided[-keep_decided:]} | set(promoted[-keep_decided:])
        champion = self.champion_version()
        if champion:
            keep_versions.add(champion)
        keep_versions |= set(self.champion_stack()[-(keep_decided + 1):])  # the rollback targets within reach
        challenger = self.challenger()
        if challenger:
            keep_versions.add(challenger["version"])
        ever_decided = {r["version"] for r in decided}
        deleted = []
        for version in self.versions():
            if version in keep_versions or version not in ever_decided:
                continue
            manifest = self.manifest(version, fetch=False)  # deleted, never downloaded
            for entry in {str(Path(p).parent) for p in manifest["checkpoints"]}:
                rel = self.store.relative(entry) if Path(entry).is_absolute() else entry
                if rel is not None and rel.startswith(f"{self.artifacts.tenant}/"):
                    self.store.delete_tree(rel)
                    shutil.rmtree(self.store.working_dir / rel, ignore_errors=True)
            self.store.delete_tree(self._rel("versions", version))
            shutil.rmtree(self.version_dir(version), ignore_errors=True)
            deleted.append(version)
        return deleted
