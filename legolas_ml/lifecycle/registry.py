"""The tenant's model registry: ensemble versions, the champion in service, the decision history.

Words from MLflow's model registry: every trained ensemble is a *version* (its id is the training
key: data version + split + config), the *candidate* is the newest version awaiting a decision,
the *champion* is the version in service. On disk, under ``<output>/<tenant>/ensemble/``::

    versions/<version>/manifest.json   one per trained ensemble, never rewritten once decided
    champion.json                      the pointer to the version in service, the stack of champions
                                       before it, and the record of the decision that put it there
    challenger.json                    the candidate waiting for holdout evidence, if any, likewise
    decisions.jsonl                    append-only: every promotion, rejection, challenger and rollback

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
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from legolas_ml.atomic_io import write_json_atomic
from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.lifecycle.retraining import ReviewCursor

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
        self.root = artifacts.root / "ensemble"

    # --- paths ---
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

    def latest_report(self, version: str) -> Path | None:
        """The version's newest explainability report (``runs/<run_id>/explainability/report.html``), or ``None``."""
        reports = self.version_dir(version).glob("runs/*/explainability/report.html")
        return max(reports, key=lambda p: (p.stat().st_mtime_ns, str(p)), default=None)

    # --- versions ---
    def write_candidate(self, manifest: dict[str, Any]) -> Path:
        """Record a trained ensemble as a version (a candidate until decided)."""
        if not manifest.get("version") or not manifest.get("checkpoints"):
            raise ValueError(f"a candidate manifest needs 'version' and 'checkpoints', got keys {sorted(manifest)}")
        return write_json_atomic(self.manifest_path(manifest["version"]), manifest)

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.manifest_path(version)
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            known = self.versions()
            raise ValueError(f"version {version!r} of tenant {self.artifacts.tenant!r} does not exist; known versions: {known}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ChampionUnavailableError(f"ensemble manifest {path} is unreadable: {exc}") from None
        if not isinstance(manifest, dict) or "checkpoints" not in manifest:
            raise ChampionUnavailableError(f"ensemble manifest {path} lacks 'checkpoints'")
        return manifest

    def versions(self) -> list[str]:
        directory = self.root / "versions"
        if not directory.exists():
            return []
        return sorted(p.name for p in directory.iterdir() if (p / "manifest.json").exists())

    # --- the champion ---
    def champion_version(self) -> str | None:
        """The version in service, ``None`` when the tenant never promoted one.

        Raises:
            ChampionUnavailableError: if the pointer exists but cannot be read.
        """
        if not self.pointer_path.exists():
            return self._adopt_legacy_manifest()
        try:
            version = json.loads(self.pointer_path.read_text())["version"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ChampionUnavailableError(
                f"the champion pointer {self.pointer_path} is damaged ({exc}); {self._fix_hint()}"
            ) from None
        if not isinstance(version, str) or not version:
            raise ChampionUnavailableError(f"the champion pointer {self.pointer_path} names no version; {self._fix_hint()}")
        return version

    def _adopt_legacy_manifest(self) -> str | None:
        """Before the registry, ``ensemble/ensemble.json`` was the model in service: adopt it as a
        version rather than read its absence of a pointer as "no model" (first-training mode)."""
        legacy = self.root / "ensemble.json"
        if not legacy.exists():
            return None
        try:
            manifest = json.loads(legacy.read_text())
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
        write_json_atomic(self.pointer_path, {"version": version, "since": record["at"], "stack": [version], "record": record})
        self._complete_journal()
        legacy.rename(legacy.with_name("ensemble.json.adopted"))
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
    def _pointer(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # champion_version() reports a damaged champion pointer; a challenger's is dropped
        return data if isinstance(data, dict) else None

    def _log(self) -> list[dict[str, Any]]:
        if not self.decisions_path.exists():
            return []
        records = []
        for line in self.decisions_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

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
        committed = [(self._pointer(path) or {}).get("record") for path in (self.pointer_path, self.challenger_path)]
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
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with open(self.decisions_path, "a+b") as handle:
            # A torn last line (a crash mid-append) ends without a newline: end it, so this record is whole.
            if handle.seek(0, os.SEEK_END):
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    line = "\n" + line
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        return record

    def _previous_champion(self) -> str | None:
        """The version in service for a record; a damaged pointer reads as the top of the logged stack,
        so `legolas promote` and `legolas rollback` can still repair it."""
        try:
            return self.champion_version()
        except ChampionUnavailableError:
            stack = self._replayed_stack()
            return stack[-1] if stack else None

    def _record(self, action: str, version: str, *, actor: str, reason: str, **extra: Any) -> dict[str, Any]:
        manifest = self.manifest(version)
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
        pointer = self._pointer(self.pointer_path) or {}
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
        write_json_atomic(self.pointer_path, {"version": record["version"], "since": record["at"], "stack": stack, "record": record})
        self._complete_journal()  # logs the record the pointer now carries
        if challenger is not None and challenger["version"] == record["version"]:
            self.challenger_path.unlink(missing_ok=True)
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
            self.challenger_path.unlink(missing_ok=True)
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
        write_json_atomic(self.challenger_path, {"version": version, "since": since, "holdout_n": holdout_n, "record": record})
        self._complete_journal()  # logs the record the pointer now carries
        return record

    def challenger(self) -> dict[str, Any] | None:
        """The waiting challenger ``{"version", "since", "holdout_n", "record"}``, or ``None``.

        A challenger pointer left behind by a crash after its version was decided is ignored.
        """
        pointer = self._pointer(self.challenger_path)
        if not pointer or not pointer.get("version") or not isinstance(pointer.get("record"), dict):
            return None
        version = pointer["version"]
        if (self._pointer(self.pointer_path) or {}).get("version") == version:
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
            manifest = self.manifest(version)
            for folds_dir in {str(Path(p).parent) for p in manifest["checkpoints"]}:
                if Path(folds_dir).resolve().is_relative_to(self.artifacts.root.resolve()):
                    shutil.rmtree(folds_dir, ignore_errors=True)
            shutil.rmtree(self.version_dir(version), ignore_errors=True)
            deleted.append(version)
        return deleted
