"""Tenants live: a tenant added, changed or removed while Dagster runs is picked up without a person.

The definitions discover the tenants each time the code location loads (``tenancy``), so what a
change needs is a load. Who loads it again depends on who serves the code location:

- ``dagster-daemon run`` alone starts its own code server and replaces it every 60 s
  (``RELOAD_WORKSPACE_INTERVAL`` in ``dagster/_daemon/controller.py``: it clears its server registry
  and refreshes the workspace); the new server imports the definitions afresh. Nothing to ask.
- ``dagster dev`` (``make ui``) gives the webserver and the daemon one shared code server that nothing
  restarts on a timer; only a reload does (the UI's button, or the webserver's GraphQL mutation
  ``reloadRepositoryLocation``), and the daemon takes the new snapshot at its next 60 s refresh.

So ``reload_on_tenant_change`` compares the tenants its code location was built with to the ones a
load would build now (``tenancy.plan_tenants``, the load's own rule). While they differ its skip
reason names the tenants added, changed and removed, and, when ``LEGOLAS_DAGSTER_URL`` names the
webserver, it asks the webserver to reload the code location: once per difference, and again after
``RETRY_AFTER`` while the difference stays.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable
from urllib.parse import urlsplit

from dagster import DefaultSensorStatus, SensorDefinition, SensorEvaluationContext, SensorResult, sensor

from legolas_ml.core import settings
from legolas_ml.data.store import StoreUnavailableError

from .resources import MongoResource, WorkspaceResource
from .tenancy import TenantPlan, plan_tenants

#: A reload asked for that did not remove the difference (a failed load, a webserver restarting) is asked again after this.
RETRY_AFTER = timedelta(minutes=5)
#: How long a tick waits for the webserver's answer before it lets the reload finish on its own.
ANSWER_WAIT_S = 10.0


@dataclass(frozen=True)
class TenantChange:
    """How the store's tenants differ from the code location's: names added and removed, settings changed."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # "insurance (n_folds 2 -> 3)"
    removed: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def describe(self) -> str:
        """``added acme; changed insurance (n_folds 2 -> 3); removed old``."""
        parts = [(what, names) for what, names in (("added", self.added), ("changed", self.changed), ("removed", self.removed)) if names]
        return "; ".join(f"{what} {', '.join(names)}" for what, names in parts)


def compare_tenants(loaded: list[TenantPlan], stored: list[TenantPlan]) -> TenantChange:
    """What a load of the code location would change: tenants added, removed, and those whose settings changed.

    Any setting counts, not only K: a loaded tenant keeps its settings (threshold, model, audit rules)
    in its assets and in the sensors until the code location loads again.
    """
    before = {p.name: p.settings.to_dict() for p in loaded}
    after = {p.name: p.settings.to_dict() for p in stored}
    changed = []
    for name in sorted(set(before) & set(after)):
        if before[name] != after[name]:
            fields = sorted(set(before[name]) | set(after[name]))
            diffs = [f"{f} {before[name].get(f, 'default')} -> {after[name].get(f, 'default')}" for f in fields if before[name].get(f) != after[name].get(f)]
            changed.append(f"{name} ({', '.join(diffs)})")
    return TenantChange(
        added=tuple(sorted(set(after) - set(before))), changed=tuple(changed), removed=tuple(sorted(set(before) - set(after))),
    )


@dataclass(frozen=True)
class ReloadDecision:
    """Whether this tick asks the webserver for a reload, and the words the skip reason gives for it."""

    ask: bool
    reason: str


def decide_reload(change: TenantChange, last_ask: dict | None, now: datetime, webserver_url: str, location: str | None) -> ReloadDecision:
    """Ask for a reload once per difference, again after ``RETRY_AFTER``; say why not otherwise.

    Args:
        change: the difference between the loaded and the stored tenants.
        last_ask: the cursor's record of the last request, ``{"change": describe(), "at": ISO time}``, or ``None``.
        now: the tick's time (UTC, naive).
        webserver_url: ``LEGOLAS_DAGSTER_URL``; empty when no webserver is to be asked.
        location: the code location's name, ``None`` when the tick does not know it.
    """
    if not change.any:
        return ReloadDecision(False, "")
    if not webserver_url:
        return ReloadDecision(False, (
            "no webserver to ask (LEGOLAS_DAGSTER_URL unset): a daemon started alone reloads its code location every 60 s by "
            "itself; under `dagster dev` set LEGOLAS_DAGSTER_URL to the webserver, or press Reload in its Deployment page"
        ))
    if location is None:
        return ReloadDecision(False, "this tick does not know its code location's name, so no reload is asked: press Reload in the UI")
    if last_ask and last_ask.get("change") == change.describe():
        asked_at = datetime.fromisoformat(last_ask["at"])
        if now - asked_at < RETRY_AFTER:
            return ReloadDecision(False, (
                f"asked {webserver_url} to reload code location {location} at {asked_at:%Y-%m-%d %H:%M:%S} UTC; "
                f"asking again after {asked_at + RETRY_AFTER:%H:%M:%S} if the tenants still differ"
            ))
    return ReloadDecision(True, f"asked {webserver_url} to reload code location {location}")


def reload_code_location(webserver_url: str, location: str, wait_s: float = ANSWER_WAIT_S) -> str:
    """Ask the webserver to reload ``location`` (GraphQL ``reloadRepositoryLocation``); what it answered.

    The request runs in its own thread: the reload replaces the code server that runs this very
    tick, and the webserver answers only once the new one has loaded, which on a busy machine can
    outlast the daemon's timeout for a sensor. The tick waits ``wait_s`` for a quick answer (an error,
    a refused reload, a fast load), then lets the request finish without it.

    Returns:
        ``"reloaded"``, ``"is reloading (no answer within N s)"``, or why the reload was not done.
    """
    from dagster_graphql import DagsterGraphQLClient, ReloadRepositoryLocationStatus

    parts = urlsplit(webserver_url)
    outcome: dict[str, str] = {}

    def ask() -> None:
        try:
            client = DagsterGraphQLClient(
                parts.hostname or "", port_number=parts.port, use_https=parts.scheme == "https", path_prefix=parts.path.rstrip("/"),
            )
            info = client.reload_repository_location(location)
            ok = info.status == ReloadRepositoryLocationStatus.SUCCESS
            outcome["answer"] = "reloaded" if ok else f"refused the reload ({info.failure_type}: {info.message})"
        except Exception as exc:  # noqa: BLE001 - any failure is the tick's reason, never a failed tick
            outcome["answer"] = f"could not be asked ({type(exc).__name__}: {exc})"

    thread = threading.Thread(target=ask, name="legolas-reload-code-location", daemon=True)
    thread.start()
    thread.join(wait_s)
    return outcome.get("answer", f"is reloading (no answer within {wait_s:g} s)")


def tenants_tick(
    loaded: list[TenantPlan], stored: list[TenantPlan], cursor: str | None, now: datetime, webserver_url: str, location: str | None,
    reload: Callable[[str, str], str] = reload_code_location,
) -> tuple[str, str | None]:
    """One tick, the store already read: ``(skip reason, new cursor)``; asks for the reload when due."""
    change = compare_tenants(loaded, stored)
    if not change.any:
        return f"the code location's tenants are the store's: {_names(loaded)}", cursor
    last_ask = json.loads(cursor) if cursor else None
    decision = decide_reload(change, last_ask, now, webserver_url, location)
    reason = f"tenants changed since the code location loaded ({_names(loaded)}): {change.describe()}; until it reloads they are not trained"
    if not decision.ask:
        return f"{reason}; {decision.reason}", cursor
    answer = reload(webserver_url, location)
    return f"{reason}; {decision.reason}: the webserver {answer}", json.dumps({"change": change.describe(), "at": now.isoformat()})


def _names(plans: list[TenantPlan]) -> str:
    return ", ".join(p.name for p in plans) or "none"


def build_tenants_sensor(loaded: list[TenantPlan], reload: Callable[[str, str], str] = reload_code_location) -> SensorDefinition:
    """``reload_on_tenant_change``: sees the store's tenants differ from ``loaded`` and has the code location reloaded."""

    @sensor(
        name="reload_on_tenant_change",
        # Twice as often as the retraining sensor (at most every 30 s): a new tenant is named before it is due.
        minimum_interval_seconds=max(1, min(30, settings.sensor_interval_s() // 2)),
        default_status=DefaultSensorStatus.RUNNING,
        description="Compares the tenants this code location was built with to the store's (legolas tenants add/remove, "
        "imported documents); while they differ, names them and asks the webserver (LEGOLAS_DAGSTER_URL) to reload the code "
        "location. A daemon started alone reloads it every 60 s by itself",
    )
    def reload_on_tenant_change(context: SensorEvaluationContext, mongo: MongoResource, workspace: WorkspaceResource):
        from pymongo.errors import PyMongoError

        try:
            with mongo.catalogue() as catalogue:
                found, known = catalogue.discover(), catalogue.known()
        except (StoreUnavailableError, PyMongoError, OSError) as exc:
            return SensorResult(skip_reason=f"the store cannot be read, the tenants stay as loaded ({_names(loaded)}): {exc}")
        stored, refused = plan_tenants(found, known)
        origin = context.code_location_origin
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        reason, cursor = tenants_tick(
            loaded, stored, context.cursor, now, workspace.webserver_url, origin.location_name if origin else None, reload,
        )
        if refused:  # a key-name clash is told nowhere else but in the load's log
            reason += "\nrefused, not loaded: " + "; ".join(refused)
        context.log.info(reason)
        return SensorResult(skip_reason=reason, cursor=cursor)

    return reload_on_tenant_change
