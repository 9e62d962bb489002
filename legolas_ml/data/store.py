"""Tenant-scoped access to the classification and review collections, on MongoDB or embedded.

With a URI, LEGOLAS talks to a real MongoDB through pymongo. Without one it opens litemongo, an
embedded on-disk store with pymongo's API: durable across processes (webserver, daemon and CLI see
the same data), crash-safe, with unique indexes and aggregate, and fast enough at 100k documents.
Every query here is written in a form that both evaluate identically (regexes as compiled
``re.Pattern`` objects, never ``{"$not": {"$regex": ..., "$options": ...}}``, which litemongo rejects).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

CLASSIFICATIONS = "classifications"
REVIEWS = "human_reviews"
DEFAULT_DATABASE = "legolas"

def trusted_llm_query(tenant: str) -> dict[str, Any]:
    """The trusted-LLM rule: method matches "llm" and neither "human" nor "ml" (case-insensitive),
    a prediction exists and is not null, and the document is not waiting for review."""
    return {
        "tenant": tenant,
        "$and": [
            {"classification_method": re.compile("llm", re.IGNORECASE)},
            {"classification_method": {"$not": re.compile("human", re.IGNORECASE)}},
            {"classification_method": {"$not": re.compile("ml", re.IGNORECASE)}},
            {"llm_prediction": {"$exists": True, "$ne": None}},
            {"needs_review": {"$ne": True}},
        ],
    }


class StoreUnavailableError(ConnectionError):
    """The store cannot be reached; the message names the host and never the password."""


def redact_uri(uri: str) -> str:
    """``mongodb://user:secret@host/db`` -> ``mongodb://user:***@host/db`` (also in query strings)."""
    if not uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return re.sub(r"//[^@/]*@", "//***@", uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hosts}" if ":" in userinfo else f"{user}@{hosts}"
    query = re.sub(r"(?i)(password|secret|token)=[^&]*", r"\1=***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def uri_password(uri: str | None) -> str | None:
    """The password inside a URI, so any text can be scrubbed of it (including URL-decoded forms)."""
    if not uri:
        return None
    try:
        netloc = urlsplit(uri).netloc
    except ValueError:
        return None
    if "@" not in netloc:
        return None
    userinfo = netloc.rsplit("@", 1)[0]
    return userinfo.split(":", 1)[1] if ":" in userinfo else None


def scrub(text: str, uri: str | None) -> str:
    """Remove the URI's password from any text (logs, errors, metadata)."""
    from urllib.parse import unquote

    secret = uri_password(uri)
    if uri:
        text = text.replace(uri, redact_uri(uri))
    if secret:
        for form in {secret, unquote(secret)}:
            if form:
                text = text.replace(form, "***")
    return text


def uri_hosts(uri: str) -> str:
    try:
        netloc = urlsplit(uri).netloc
    except ValueError:
        return "<unparseable URI>"
    return netloc.rsplit("@", 1)[-1] or "<no host>"


def connect(uri: str | None, data_dir: str | Path, timeout_s: float = 5.0):
    """A pymongo-compatible client: MongoDB when ``uri`` is set, the embedded store otherwise.

    Raises:
        StoreUnavailableError: if MongoDB does not answer within ``timeout_s`` (names the host only).
    """
    if uri:
        import pymongo
        from pymongo.errors import ConfigurationError, InvalidURI, PyMongoError

        try:
            client = pymongo.MongoClient(
                uri,
                serverSelectionTimeoutMS=int(timeout_s * 1000),
                connectTimeoutMS=int(timeout_s * 1000),
                tz_aware=False,
            )
            client.admin.command("ping")
        except (InvalidURI, ConfigurationError, ValueError) as exc:
            raise StoreUnavailableError(f"invalid MongoDB URI {redact_uri(uri)}: {scrub(str(exc), uri)}") from None
        except PyMongoError as exc:
            raise StoreUnavailableError(
                f"cannot reach MongoDB at {uri_hosts(uri)} within {timeout_s:g}s: {scrub(str(exc), uri)[:300]}"
            ) from None
        return client
    import litemongo

    path = Path(data_dir) / "store"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return litemongo.connect(str(path))
    except OSError as exc:
        raise StoreUnavailableError(f"cannot open the embedded store at {path}: {exc}") from None


class TenantStore:
    """The two collections of one tenant.

    Args:
        database: a pymongo (or litemongo) ``Database``.
        tenant: the tenant every query is scoped to.
    """

    def __init__(self, database, tenant: str) -> None:
        self.db = database
        self.tenant = tenant
        self.classifications = database[CLASSIFICATIONS]
        self.reviews = database[REVIEWS]

    def ensure_indexes(self) -> None:
        """Create the collections' indexes (idempotent: safe on every start)."""
        self.classifications.create_index([("tenant", 1), ("session_id", 1)], unique=True, name="tenant_session")
        self.reviews.create_index(
            [("tenant", 1), ("session_id", 1), ("reviewed_at", 1)], unique=True, name="tenant_session_reviewed"
        )
        self.reviews.create_index([("tenant", 1), ("reviewed_at", 1), ("_id", 1)], name="tenant_reviewed_at")

    # --- reads ---
    def trusted_llm_classifications(self) -> Iterator[dict[str, Any]]:
        return self.classifications.find(trusted_llm_query(self.tenant))

    def human_reviews(self) -> Iterator[dict[str, Any]]:
        return self.reviews.find({"tenant": self.tenant})

    def texts_for(self, session_ids: Iterable[str], chunk: int = 1000) -> dict[str, Any]:
        """The classification text of each session that has one (looked up in chunks)."""
        ids = sorted({s for s in session_ids if isinstance(s, str)})
        texts: dict[str, Any] = {}
        for start in range(0, len(ids), chunk):
            query = {"tenant": self.tenant, "session_id": {"$in": ids[start : start + chunk]}}
            for doc in self.classifications.find(query, {"session_id": 1, "text": 1}):
                texts[doc["session_id"]] = doc.get("text")
        return texts

    def reviews_after(self, after: tuple[datetime, str] | None, limit: int = 10_000) -> list[dict[str, Any]]:
        """Reviews strictly after the cursor ``(reviewed_at, str(_id))``, oldest first.

        The cursor is compared on both fields so reviews sharing a timestamp are neither lost nor
        counted twice. Only ``datetime`` timestamps take part (others cannot be ordered).
        """
        query: dict[str, Any] = {"tenant": self.tenant, "reviewed_at": {"$type": "date"}}
        if after is not None:
            query["reviewed_at"] = {"$type": "date", "$gte": after[0]}
        docs = []
        for doc in self.reviews.find(query, {"text": 0}).sort([("reviewed_at", 1), ("_id", 1)]):
            key = (doc["reviewed_at"], str(doc["_id"]))
            if after is None or key > (after[0], after[1]):
                docs.append(doc)
            if len(docs) >= limit:
                break
        docs.sort(key=lambda d: (d["reviewed_at"], str(d["_id"])))
        return docs

    def counts(self) -> dict[str, Any]:
        newest = list(
            self.reviews.find({"tenant": self.tenant, "reviewed_at": {"$type": "date"}}, {"reviewed_at": 1})
            .sort([("reviewed_at", -1)])
            .limit(1)
        )
        return {
            "classifications": self.classifications.count_documents({"tenant": self.tenant}),
            "reviews": self.reviews.count_documents({"tenant": self.tenant}),
            "newest_review": newest[0]["reviewed_at"] if newest else None,
        }

    # --- writes ---
    def insert_classifications(self, docs: list[dict[str, Any]]) -> int:
        """Insert classification documents of this tenant; returns how many were inserted."""
        if not docs:
            return 0
        return len(self.classifications.insert_many([{**d, "tenant": self.tenant} for d in docs]).inserted_ids)

    def insert_review(self, doc: dict[str, Any]) -> bool:
        """Insert one review; ``False`` if the same (session, reviewed_at) is already stored."""
        from pymongo.errors import DuplicateKeyError

        try:
            self.reviews.insert_one({**doc, "tenant": self.tenant})
        except DuplicateKeyError:
            return False
        return True


def list_tenants(database) -> list[str]:
    tenants = set(database[CLASSIFICATIONS].distinct("tenant")) | set(database[REVIEWS].distinct("tenant"))
    return sorted(t for t in tenants if isinstance(t, str))


@contextlib.contextmanager
def open_tenant_store(uri: str | None, data_dir: str | Path, database: str, tenant: str, timeout_s: float = 5.0):
    """Connect, ensure the indexes, yield the tenant's ``TenantStore``, and always close the client."""
    client = connect(uri, data_dir, timeout_s)
    try:
        store = TenantStore(client[database], tenant)
        store.ensure_indexes()
        yield store
    finally:
        client.close()
