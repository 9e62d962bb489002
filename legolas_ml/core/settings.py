"""Every ``LEGOLAS_*`` environment variable, parsed in one place.

``LEGOLAS_HOME`` (default ``./var`` under the working directory) holds the embedded store
(``store/``), the artifacts (``output/<tenant>/``), the training logs (``output/logs/``) and the
project-local Dagster home (``dagster/``). The webserver, the daemon and the CLI all start in the
project root, so they all resolve the same directory.

Each accessor reads its variable when called (tests and the CLI set them at run time), returns
the default when the variable is unset or empty, and otherwise either returns a typed value or
raises ``SettingsError`` naming the variable, the allowed values and what it received. A value
is never silently replaced: ``LEGOLAS_EPOCHS=0`` is an error, not "the preset's". No other module
reads a ``LEGOLAS_*`` variable from ``os.environ``.

Example:
    >>> n_folds()  # with LEGOLAS_N_FOLDS=2.5  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    legolas_ml.core.settings.SettingsError: LEGOLAS_N_FOLDS must be an integer >= 2 (K of K-fold; LEGOLAS_PRESET=dev for one train/val split), got '2.5'
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from legolas_ml.core.choices import DEFAULT_MODEL, MODEL_INITS, PRECISIONS, RETRAIN_DATA, RUNNERS
from legolas_ml.core.identity import validate_database, validate_tenant


class SettingsError(ValueError):
    """A ``LEGOLAS_*`` environment variable holds a value outside its allowed range."""


DEFAULT_TENANT = "demo"

#: The variable holding the MongoDB URI. Dagster resources refer to it by name (``EnvVar``), so
#: the URI, password included, is never written into Dagster's run storage.
MONGO_URI_VARIABLE = "LEGOLAS_MONGO_URI"

#: Training presets, picked with LEGOLAS_PRESET. "default" is real use (K=10, every layer trained,
#: focal loss at 5e-5 for 10 epochs); "demo" makes the README's main job finish in under 5 minutes
#: on a 2-core CPU with a model better than the LLM labels it learns from: every layer trained,
#: cross-entropy at a 4x higher peak learning rate for 2 epochs, K=3 (docs/recipe.md has the
#: measurements: focal loss with gamma 2 over ~100 steps at 5e-5 left the folds under-trained and
#: under-confident); "dev" is one train/val split for iterating.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"n_folds": 10, "kfold": True, "epochs": 10, "max_length": 256, "freeze_layers": 0, "lr": 5e-5, "loss": "focal", "focal_gamma": 2.0},
    "demo": {"n_folds": 3, "kfold": True, "epochs": 2, "max_length": 128, "freeze_layers": 0, "lr": 2e-4, "loss": "ce", "focal_gamma": 2.0},
    "dev": {"n_folds": 1, "kfold": False, "epochs": 1, "max_length": 64, "freeze_layers": 0, "lr": 5e-5, "loss": "focal", "focal_gamma": 2.0},
}

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


# --- where things live ---------------------------------------------------------------------------


def home_dir() -> Path:
    """``LEGOLAS_HOME``: store, artifacts, logs and the project-local Dagster home (default ``./var``)."""
    return Path(_raw("LEGOLAS_HOME") or "var").expanduser().resolve()


def data_dir() -> Path:
    """The embedded store's directory (used only when no ``LEGOLAS_MONGO_URI`` is set)."""
    return home_dir()


def output_dir() -> Path:
    return home_dir() / "output"


def artifacts_root() -> str:
    """``LEGOLAS_ARTIFACTS``: where artifacts are published (``s3://bucket/prefix``, ``gs://...``, a
    local directory); empty (unset) = the output directory itself, in place (``legolas_ml.core.storage``)."""
    raw = _raw("LEGOLAS_ARTIFACTS")
    if raw is None:
        return ""
    if "://" in raw and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^\s]+", raw):
        raise SettingsError(
            f"LEGOLAS_ARTIFACTS must be a local directory or a URL such as s3://bucket/prefix or gs://bucket/prefix, got {raw!r}"
        )
    return raw


def mongo_uri() -> str | None:
    """``LEGOLAS_MONGO_URI``: a real MongoDB; ``None`` (unset) means the embedded store."""
    return _raw(MONGO_URI_VARIABLE)


def database_name() -> str:
    """``LEGOLAS_DATABASE`` (default ``legolas``), checked like every database name."""
    return _checked("LEGOLAS_DATABASE", _raw("LEGOLAS_DATABASE") or "legolas", validate_database)


def tenant() -> str:
    """``LEGOLAS_TENANT`` (default ``demo``), checked like every tenant name (it names directories)."""
    return _checked("LEGOLAS_TENANT", _raw("LEGOLAS_TENANT") or DEFAULT_TENANT, validate_tenant)


# --- what is trained -----------------------------------------------------------------------------


def preset_name() -> str:
    """``LEGOLAS_PRESET``: ``default``, ``demo`` or ``dev``."""
    return _choice("LEGOLAS_PRESET", "default", tuple(PRESETS))


def n_folds() -> int | None:
    """``LEGOLAS_N_FOLDS``: K, overriding the preset's; ``None`` when unset."""
    return _integer("LEGOLAS_N_FOLDS", None, 2, "K of K-fold; LEGOLAS_PRESET=dev for one train/val split")


def preset() -> dict[str, Any]:
    """The active preset, with ``LEGOLAS_N_FOLDS`` replacing its K (the fold partitions follow it)."""
    values = dict(PRESETS[preset_name()])
    k = n_folds()
    if k is not None:
        values.update(n_folds=k, kfold=True)
    return values


def is_local_model_path(model_name: str) -> bool:
    """True when a model name can only mean a directory (absolute, ``./``, ``../`` or ``~``).

    ``org/name`` is a Hugging Face id; a name like this one is never looked up on the Hub, so a
    missing directory is reported as such instead of as a failed Hub download.
    """
    return model_name.startswith(("/", "./", "../", "~")) or model_name in (".", "..")


_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# A branch, a tag or a commit hash: what the Hub's `revision=` takes (branches may hold '/').
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


def split_model_revision(model_name: str, setting: str = "model_name") -> tuple[str, str | None]:
    """``org/name@revision`` -> ``("org/name", "revision")``; no ``@`` -> ``(model_name, None)``.

    A revision pins a Hugging Face model to a branch, tag or commit hash, so a retraining months
    later reads the same weights; it travels inside ``model_name`` (settings, tenant settings and
    every checkpoint's config alike). A local directory never has one: ``@`` is part of its path.

    Args:
        model_name: a Hugging Face id, ``org/name@revision``, a local directory or the bundled name.
        setting: the setting the value came from, named in the error.

    Raises:
        SettingsError: if the id or the revision is malformed, naming ``setting``, the form and the value.

    Example:
        >>> split_model_revision("sentence-transformers/all-MiniLM-L6-v2@c9745ed1")
        ('sentence-transformers/all-MiniLM-L6-v2', 'c9745ed1')
    """
    if "@" not in model_name or is_local_model_path(model_name):
        return model_name, None
    hub_id, _, revision = model_name.partition("@")
    if not _HUB_ID_RE.match(hub_id) or not _REVISION_RE.match(revision) or ".." in revision:
        raise SettingsError(
            f"{setting} must be a Hugging Face id, optionally with a revision (org/name@revision, the revision a "
            f"branch, tag or commit hash), or a local directory, got {model_name!r}"
        )
    return hub_id, revision


def model_name() -> str:
    """``LEGOLAS_MODEL``: a Hugging Face id (``org/name`` or ``org/name@revision``) or a local directory
    (default: the bundled MiniLM-L6)."""
    name = _raw("LEGOLAS_MODEL") or DEFAULT_MODEL
    split_model_revision(name, "LEGOLAS_MODEL")
    if is_local_model_path(name) and not Path(name).expanduser().is_dir():
        raise SettingsError(
            f"LEGOLAS_MODEL must be a Hugging Face id (org/name) or an existing local model directory, "
            f"got {name!r}: no such directory"
        )
    return name


def model_init() -> str:
    """``LEGOLAS_MODEL_INIT``: ``pretrained`` weights or ``scratch`` (architecture from config only)."""
    return _choice("LEGOLAS_MODEL_INIT", "pretrained", MODEL_INITS)


def model_overrides() -> dict[str, Any]:
    """``LEGOLAS_MODEL_OVERRIDES``: a JSON object of model config fields (default ``{}``)."""
    raw = _raw("LEGOLAS_MODEL_OVERRIDES")
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        value, reason = None, f" ({exc.msg})"
    else:
        reason = ""
    if not isinstance(value, dict):
        raise SettingsError(
            f"LEGOLAS_MODEL_OVERRIDES must be a JSON object of model config fields such as "
            f"'{{\"num_hidden_layers\": 2}}', got {raw!r}{reason}"
        )
    return value


def device() -> str:
    """``LEGOLAS_DEVICE``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    raw = _raw("LEGOLAS_DEVICE") or "auto"
    if not _DEVICE_RE.match(raw):
        raise SettingsError(f"LEGOLAS_DEVICE must be one of 'auto', 'cpu', 'cuda' or 'cuda:N', got {raw!r}")
    return raw


def precision() -> str:
    """``LEGOLAS_PRECISION``: ``auto`` (bf16 where native), ``fp32``, ``bf16`` or ``fp16``."""
    return _choice("LEGOLAS_PRECISION", "auto", PRECISIONS)


def epochs() -> int | None:
    """``LEGOLAS_EPOCHS``: maximum epochs per fold; ``None`` (unset) means the preset's."""
    return _integer("LEGOLAS_EPOCHS", None, 1, "unset = the preset's")


def max_length() -> int | None:
    """``LEGOLAS_MAX_LENGTH``: tokens per text; ``None`` (unset) means the preset's."""
    return _integer("LEGOLAS_MAX_LENGTH", None, 1, "unset = the preset's")


def batch_size() -> int:
    """``LEGOLAS_BATCH_SIZE`` (default 16)."""
    return _integer("LEGOLAS_BATCH_SIZE", 16, 1)


def lr() -> float | None:
    """``LEGOLAS_LR``: the peak learning rate; ``None`` (unset) means the preset's."""
    if _raw("LEGOLAS_LR") is None:
        return None
    return _positive_float("LEGOLAS_LR", 5e-5, allow_zero=False)


# --- explanations and retraining -----------------------------------------------------------------


def retrain_data() -> str:
    """``LEGOLAS_RETRAIN_DATA``: what a retraining trains on, ``reviews`` (default), ``switch`` or ``unflagged``."""
    return _choice("LEGOLAS_RETRAIN_DATA", "reviews", RETRAIN_DATA)


def retrain_min_reviews_per_class() -> int:
    """``LEGOLAS_RETRAIN_MIN_REVIEWS_PER_CLASS``: reviewed rows every class needs before ``switch`` drops LLM labels (default 50)."""
    return _integer("LEGOLAS_RETRAIN_MIN_REVIEWS_PER_CLASS", 50, 1)


def warm_start() -> bool:
    """``LEGOLAS_WARM_START``: a retraining's folds start from the champion's (``1``, default) or from the pretrained model (``0``)."""
    return _choice("LEGOLAS_WARM_START", "1", ("1", "0")) == "1"


def explain_per_class() -> int:
    """``LEGOLAS_EXPLAIN_PER_CLASS``: test texts explained per predicted class (default 2)."""
    return _integer("LEGOLAS_EXPLAIN_PER_CLASS", 2, 1)


def retrain_threshold() -> int:
    """``LEGOLAS_RETRAIN_THRESHOLD``: new reviews that trigger a retraining (default 50)."""
    return _integer("LEGOLAS_RETRAIN_THRESHOLD", 50, 1)


def sensor_interval_s() -> int:
    """``LEGOLAS_SENSOR_INTERVAL_S``: seconds between the retraining sensor's checks for new reviews (default 60)."""
    return _integer("LEGOLAS_SENSOR_INTERVAL_S", 60, 1)


def retrain_max_age_hours() -> float:
    """``LEGOLAS_RETRAIN_MAX_AGE_HOURS``: retrain once the oldest waiting review is this old (default 24; 0 = never)."""
    return _positive_float("LEGOLAS_RETRAIN_MAX_AGE_HOURS", 24.0, allow_zero=True, hint="0 turns the age trigger off")


# --- what the UI links to, experiment tracking ---------------------------------------------------


def artifacts_url() -> str:
    """``LEGOLAS_ARTIFACTS_URL``: the http(s) URL serving ``$LEGOLAS_HOME/output`` (``make artifacts``);
    metadata then links each artifact under it. Unset: artifacts are shown as paths only."""
    return _http_url("LEGOLAS_ARTIFACTS_URL", "http://127.0.0.1:3001")


def dagster_url() -> str:
    """``LEGOLAS_DAGSTER_URL``: the Dagster webserver (``make ui``: http://127.0.0.1:3000), whose GraphQL API
    the ``reload_on_tenant_change`` sensor asks to reload the code location when tenants change. Unset:
    no webserver is asked (a daemon started alone reloads its code location every 60 s by itself)."""
    return _http_url("LEGOLAS_DAGSTER_URL", "http://127.0.0.1:3000")


def _http_url(name: str, example: str) -> str:
    """The variable as an http(s) URL without its trailing '/'; ``""`` when unset."""
    raw = _raw(name)
    if raw is None:
        return ""
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", raw):
        raise SettingsError(f"{name} must be an http:// or https:// URL such as {example}, got {raw!r}")
    return raw.rstrip("/")


def _hide_password(uri: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``: a bad URI is echoed, its password never."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", uri)


def mlflow_tracking_uri() -> str:
    """``LEGOLAS_MLFLOW_TRACKING_URI``: log folds and register champions in MLflow; unset = off.

    ``sqlite:///var/mlflow.db`` (a local store), a ``file:`` directory, or an ``http(s)://`` server.
    """
    raw = _raw("LEGOLAS_MLFLOW_TRACKING_URI")
    if raw is None:
        return ""
    if not re.match(r"^(sqlite:///|file:|https?://|postgresql(\+\w+)?://|mysql(\+\w+)?://)", raw):
        raise SettingsError(
            "LEGOLAS_MLFLOW_TRACKING_URI must start with sqlite:///, file:, http://, https://, postgresql:// or mysql://, "
            f"got {_hide_password(raw)!r}"
        )
    return raw


# --- where folds train (legolas_ml.runners) ------------------------------------------------------


def runner() -> str:
    """``LEGOLAS_RUNNER``: ``sequential`` (default), ``ray`` or ``auto`` (Ray when several GPUs are visible)."""
    return _choice("LEGOLAS_RUNNER", "sequential", RUNNERS)


#: The forms of ``LEGOLAS_RAY_ADDRESS`` besides unset (an embedded Ray instance for the run).
RAY_ADDRESS_FORMS = ("auto", "ray://host:port", "host:port")

# host: a name or an IPv4 address (no scheme, no path); port: 1-5 digits, range-checked below.
_RAY_ADDRESS_RE = re.compile(r"^(?:(?P<auto>auto)|(?P<client>ray://)?(?P<host>[A-Za-z0-9_.-]+):(?P<port>\d{1,5}))$")


def ray_address() -> str:
    """``LEGOLAS_RAY_ADDRESS``: the Ray cluster the ray runner joins; unset = an embedded instance.

    ``auto`` joins the cluster that ``ray start`` last started on this machine; ``ray://host:port``
    connects through Ray Client (the head's client server, port 10001 by default) from any
    machine; ``host:port`` is the head's GCS address (``ray start --head --port``, 6379 by default)
    and works from a machine that is itself a node of the cluster (docs/ray.md).
    """
    return check_ray_address(_raw("LEGOLAS_RAY_ADDRESS") or "")


def check_ray_address(address: str) -> str:
    """``address`` unchanged when it is empty or one of ``RAY_ADDRESS_FORMS``.

    Args:
        address: ``""`` (an embedded instance), ``"auto"``, ``"ray://host:port"`` or ``"host:port"``.

    Returns:
        The address as given.

    Raises:
        SettingsError: naming ``LEGOLAS_RAY_ADDRESS``, the allowed forms and what was received.
    """
    match = _RAY_ADDRESS_RE.match(address) if address else None
    if address and (match is None or (not match["auto"] and not 1 <= int(match["port"]) <= 65535)):
        raise SettingsError(
            f"LEGOLAS_RAY_ADDRESS must be unset (an embedded Ray instance), {', '.join(map(repr, RAY_ADDRESS_FORMS))} "
            f"(port 1-65535), got {address!r}"
        )
    return address


def gpus_per_fold() -> float:
    """``LEGOLAS_GPUS_PER_FOLD``: the GPU share each Ray fold task asks for; unset = auto (-1)."""
    return _positive_float("LEGOLAS_GPUS_PER_FOLD", -1.0, allow_zero=True, hint="0.25 packs 4 folds per GPU")


def cpus_per_fold() -> float:
    """``LEGOLAS_CPUS_PER_FOLD``: the CPUs each Ray fold task asks for (default 1)."""
    return _positive_float("LEGOLAS_CPUS_PER_FOLD", 1.0, allow_zero=False)


def fold_retries() -> int:
    """``LEGOLAS_FOLD_RETRIES``: retries of a Ray fold whose worker or node died (default 2)."""
    return _integer("LEGOLAS_FOLD_RETRIES", 2, 0)


# --- parsing -------------------------------------------------------------------------------------


def is_set(name: str) -> bool:
    """True when the variable holds a value (blank counts as unset, as in ``_raw``)."""
    return _raw(name) is not None


def json_object(raw: str, name: str, what: str = "a JSON object") -> dict[str, Any]:
    """``raw`` parsed as a JSON object, or a ``ValueError`` naming ``name``, what it must be and what it got.

    Example:
        >>> json_object('{"patience": 3}', "--settings")
        {'patience': 3}
    """
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} must be {what}, got {raw!r}: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be {what}, got {raw!r}")
    return value


def _raw(name: str) -> str | None:
    """The variable's value, stripped; ``None`` when unset or blank (``VAR= command`` unsets it)."""
    value = os.environ.get(name, "").strip()
    return value or None


def _choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = _raw(name) or default
    if raw not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {raw!r}")
    return raw


def _integer(name: str, default: int | None, minimum: int, hint: str = "") -> int | None:
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        note = f" ({hint})" if hint else ""
        raise SettingsError(f"{name} must be an integer >= {minimum}{note}, got {raw!r}")
    return value


def _positive_float(name: str, default: float, *, allow_zero: bool, hint: str = "") -> float:
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        allowed = "a number >= 0" if allow_zero else "a number > 0"
        note = f" ({hint})" if hint else ""
        raise SettingsError(f"{name} must be {allowed}{note}, got {raw!r}")
    return value


def _checked(name: str, value: str, validate) -> str:
    try:
        return validate(value)
    except ValueError as exc:
        message = str(exc) if name in str(exc) else f"{name}: {exc}"
        raise SettingsError(message) from None
