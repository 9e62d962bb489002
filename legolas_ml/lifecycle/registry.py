"""The tenant's model registry: ensemble versions, the champion in service, the decision history.

Words from MLflow's model registry: every trained ensemble is a *version* (its id is the training
key: data version + split + config), the *candidate* is the newest version awaiting a decision,
the *champion* is the version in service. On disk, under ``<output>/<tenant>/ensemble/``::

    versions/<version>/manifest.json   one per trained ensemble, never rewritten once decided
    champion.json                      {"version": ...}: the pointer to the version in service
    decisions.jsonl                    append-only: every promotion, rejection and rollback

Only the pointer says what is in service, and it is switched atomically; the history is read back
with ``history()``. A missing or damaged pointer, manifest or checkpoint of the champion raises
``ChampionUnavailableError`` naming the file and the command that fixes it: it is never read as
"no model" (which would silently switch the quality gate to first-training mode).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from legolas_ml.atomic_io import write_json_atomic
from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.lifecycle.retraining import ReviewCursor

PROMOTED, REJECTED, ROLLED_BACK = "promoted", "rejected", "rolled_back"


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
        self._append({
            "action": PROMOTED, "version": version, "previous_champion": None, "actor": default_actor("legolas upgrade"),
            "reason": f"adopted the pre-registry manifest {legacy}", "at": _now(),
            "reviews_cursor": manifest.get("reviews_cursor"), "data_version": manifest.get("data_version"),
        })
        # The pointer before the rename: a crash in between leaves a champion, never none.
        write_json_atomic(self.pointer_path, {"version": version, "since": _now()})
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
    def history(self) -> list[dict[str, Any]]:
        """Every decision, oldest first. A torn last line (a crash mid-append) is skipped."""
        if not self.decisions_path.exists():
            return []
        records = []
        for line in self.decisions_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with open(self.decisions_path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        return record

    def _record(self, action: str, version: str, *, actor: str, reason: str, **extra: Any) -> dict[str, Any]:
        manifest = self.manifest(version)
        return {
            "action": action,
            "version": version,
            "previous_champion": self.champion_version(),
            "actor": actor,
            "reason": reason,
            "at": _now(),
            "reviews_cursor": manifest.get("reviews_cursor"),
            "data_version": manifest.get("data_version"),
            "test_balanced_accuracy": (manifest.get("test_metrics") or {}).get("balanced_accuracy"),
            **extra,
        }

    def promote(self, version: str, *, actor: str, reason: str, **extra: Any) -> dict[str, Any]:
        """Make ``version`` the champion and record who, when, why and both versions."""
        self._verify_checkpoints(self.manifest(version), verify_weights=False)
        record = self._record(PROMOTED, version, actor=actor, reason=reason, **extra)
        self._append(record)
        write_json_atomic(self.pointer_path, {"version": version, "since": record["at"]})
        return record

    def reject(self, version: str, *, actor: str, reason: str, **extra: Any) -> dict[str, Any]:
        """Record that ``version`` stays a candidate (its files stay on disk with the reason)."""
        return self._append(self._record(REJECTED, version, actor=actor, reason=reason, **extra))

    def decision_for(self, version: str) -> dict[str, Any] | None:
        """The latest promotion or rejection of ``version``, if any."""
        for record in reversed(self.history()):
            if record.get("version") == version and record.get("action") in (PROMOTED, REJECTED):
                return record
        return None

    def rollback(self, *, actor: str, reason: str = "rollback requested") -> dict[str, Any]:
        """Put back the champion that was in service before the current one.

        Raises:
            ValueError: if there is no earlier champion to return to (its files must still exist).
        """
        current = self.champion_version()
        chain = [r["version"] for r in self.history() if r.get("action") in (PROMOTED, ROLLED_BACK)]
        # Walk back through earlier champions, skipping the current one and any whose files are gone.
        for version in reversed(chain):
            if version == current:
                continue
            try:
                self._verify_checkpoints(self.manifest(version), verify_weights=False)
            except (ValueError, ChampionUnavailableError):
                continue
            record = self._record(ROLLED_BACK, version, actor=actor, reason=reason, rolled_back_from=current)
            self._append(record)
            write_json_atomic(self.pointer_path, {"version": version, "since": record["at"]})
            return record
        raise ValueError(f"tenant {self.artifacts.tenant!r} has no earlier champion to roll back to (history: {chain})")

    def consumed_reviews(self) -> ReviewCursor | None:
        """The newest review that a decided training (promoted or rejected) has read.

        The retraining sensor counts reviews after this cursor as waiting: reviews are consumed
        only once a run that trained on them reached a decision, never when a run is requested.
        """
        cursors = []
        for record in self.history():
            if record.get("action") in (PROMOTED, REJECTED) and record.get("reviews_cursor"):
                try:
                    cursors.append(ReviewCursor.parse(record["reviews_cursor"]))
                except ValueError:
                    continue
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
