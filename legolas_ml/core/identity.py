"""Names that identify things and also name files: tenants, databases, trainings.

A tenant's name becomes a directory of the output directory and of repair backups, a database's a
directory of the embedded store, a training key a version's id and its folders' names: each is
checked here, once, before it touches a path.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


#: Names of what lives beside the tenants' directories under the output directory.
RESERVED_TENANT_NAMES = ("asset_values", "logs", "tenants.json")


def validate_tenant(tenant: str) -> str:
    """Tenants name directories: letters, digits, '.', '_' and '-' only (no path traversal), and
    none of the names the output directory keeps for itself (``RESERVED_TENANT_NAMES``)."""
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant) or ".." in tenant:
        raise ValueError(
            f"tenant must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit; got {tenant!r}"
        )
    if tenant in RESERVED_TENANT_NAMES:
        raise ValueError(f"tenant must not be one of {list(RESERVED_TENANT_NAMES)} (folders of the output directory); got {tenant!r}")
    return tenant


# Database names become directories of the embedded store and must be legal MongoDB names (no '.').
_DATABASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")

def validate_database(name: str) -> str:
    """Database names name a directory of the embedded store: no path separators, no traversal.

    Raises:
        ValueError: naming the setting, the allowed characters and the name received.
    """
    if not isinstance(name, str) or not _DATABASE_RE.fullmatch(name):
        raise ValueError(
            f"database name (LEGOLAS_DATABASE, MongoResource.database) must be 1-63 characters of letters, "
            f"digits, '_' or '-', starting with a letter or digit; got {name!r}"
        )
    return name


def training_key(data_version: str, split_fingerprint: str, config: dict[str, Any]) -> str:
    """The id of one training: its data, split and config (16 hex digits). Also the ensemble's version."""
    payload = json.dumps({"data": data_version, "split": split_fingerprint, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
