"""Dagster resources: the Mongo store, the accelerator, and the training settings.

Every field can be set in run config (Launchpad or ``--config``) and defaults to an environment
variable, so a fresh clone trains on demo data in the embedded store with no configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from dagster import ConfigurableResource, InitResourceContext, ResourceDefinition, ScalarUnion, Selector, StringSource
from dagster import Field as DagsterField
from pydantic import Field

from legolas_ml.core import settings
from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.core.identity import validate_tenant
from legolas_ml.lifecycle.holdout import DEFAULT_HOLDOUT_SHARE, validate_share
from legolas_ml.lifecycle.promotion import PromotionPolicy
from legolas_ml.lifecycle.registry import ModelRegistry
from legolas_ml.review.audit import AuditSettings
from legolas_ml.core.choices import FLAG_REASONS, REASONS
from legolas_ml.training.config import TrainingConfig
from legolas_ml.training.resolution import ResolvedTraining, resolve_training
from legolas_ml.training.modeling import device_description, resolve_device, resolve_precision
from legolas_ml.data.store import open_tenant_store, redact_uri

from . import recovery
from .configuration import ConfigurationError, reported_in_one_line

if TYPE_CHECKING:
    from .tenancy import TenantPlan



class MongoResource(ConfigurableResource):
    """The deployment's classification and review store: MongoDB when ``uri`` is set, embedded otherwise.

    One store serves every tenant; each asset opens it for its own tenant (``open(tenant)``), and
    every query of the returned ``TenantStore`` is scoped to that tenant.
    """

    uri: str = Field(default="", description="MongoDB URI (from LEGOLAS_MONGO_URI); empty = embedded store")
    database: str = Field(default="legolas", description="database name")
    data_dir: str = Field(default="", description="embedded store directory; empty = $LEGOLAS_HOME")
    timeout_s: float = Field(default=5.0, description="server selection timeout: an outage fails fast")

    def open(self, tenant: str):
        """Context manager yielding ``tenant``'s ``TenantStore``; the client is always closed."""
        validate_tenant(tenant)
        return open_tenant_store(
            self.uri or None, self.data_dir or settings.data_dir(), self.database, tenant, self.timeout_s
        )

    def catalogue(self):
        """Context manager yielding the deployment's ``TenantCatalogue`` (``legolas_ml.data.tenants``)."""
        from legolas_ml.data.tenants import open_catalogue

        return open_catalogue(self.uri or None, self.data_dir or settings.data_dir(), self.database, self.timeout_s)

    def describe(self) -> str:
        """Where the data comes from, with any password redacted."""
        return f"MongoDB {redact_uri(self.uri)}" if self.uri else f"embedded store {self.data_dir or settings.data_dir()}"


class MongoUriSource(ScalarUnion):
    """The run-config type of ``mongo``'s ``uri``: ``{env: VAR}``, or a URI that holds no password.

    Dagster writes a run's config as given into its run storage before the run starts, so a
    password typed into ``uri`` would stay there in plain text; an ``{env: VAR}`` reference stores
    only the variable's name. The check runs while Dagster validates the config, so a refused
    config never becomes a run, and the error shows the URI with its password redacted.
    """

    def __init__(self) -> None:
        super().__init__(scalar_type=str, non_scalar_schema=Selector({"env": str}), _key="LegolasMongoUri")

    def post_process(self, value: Any) -> str:
        if isinstance(value, dict):
            return StringSource.post_process(value)  # {env: VAR}, resolved as Dagster's own StringSource does
        if redact_uri(value) != value:
            raise ConfigurationError(
                f"resources.mongo.config.uri must not embed a password (Dagster would keep it in plain text "
                f"with the run's config): give an environment variable reference, "
                f'{{"env": "{settings.MONGO_URI_VARIABLE}"}}, instead; got {redact_uri(value)}'
            )
        return value


def mongo_resource() -> ResourceDefinition:
    """``mongo`` as the definitions bind it: ``MongoResource``'s fields, ``uri`` typed ``MongoUriSource``.

    Defaults come from the environment: ``uri`` is the reference ``{env: LEGOLAS_MONGO_URI}`` when
    that variable is set (the embedded store otherwise), ``database`` is LEGOLAS_DATABASE. There is
    no tenant here: each tenant's assets name their own.
    """
    fields = MongoResource.to_fields_dict()

    def defaulting_to(key: str, value: Any) -> DagsterField:
        return DagsterField(fields[key].config_type, default_value=value, description=fields[key].description)

    schema = {
        **fields,
        "database": defaulting_to("database", settings.database_name()),
        "uri": DagsterField(
            MongoUriSource(),
            default_value={"env": settings.MONGO_URI_VARIABLE} if settings.mongo_uri() else "",
            description=f'MongoDB URI as {{"env": "{settings.MONGO_URI_VARIABLE}"}} (a literal URI must hold no password); empty = embedded store',
        ),
    }
    return ResourceDefinition(
        resource_fn=lambda context: MongoResource(**context.resource_config), config_schema=schema,
        description=MongoResource.__doc__,
    )


class GPUResource(ConfigurableResource):
    """The accelerator folds train on: ``auto`` picks CUDA when present and falls back to the CPU.

    Unset fields (``None``) take ``LEGOLAS_DEVICE``/``LEGOLAS_PRECISION`` when the run starts
    (``legolas_ml.training.resolution``), so a run config naming one leaves the other as set.
    """

    device: Optional[str] = Field(default=None, description="'auto', 'cpu', 'cuda' or 'cuda:N'; unset = LEGOLAS_DEVICE (default 'auto')")
    precision: Optional[str] = Field(default=None, description="'auto' (bf16 where native), 'fp32', 'bf16' or 'fp16'; unset = LEGOLAS_PRECISION (default 'auto')")

    def overrides(self) -> dict[str, Any]:
        """The ``TrainingConfig`` fields this resource's config sets."""
        return {name: value for name, value in (("device", self.device), ("precision", self.precision)) if value is not None}

    def device_setting(self) -> str:
        """The device as set (``auto``, ``cpu``, ``cuda:N``): the run config's, else ``LEGOLAS_DEVICE``."""
        return self.device if self.device is not None else settings.device()

    def resolved(self) -> dict[str, Any]:
        """Device and precision actually used, with the device's name and memory."""
        device = resolve_device(self.device_setting())
        precision = self.precision if self.precision is not None else settings.precision()
        return {**device_description(device), "precision": resolve_precision(precision, device)}


#: TrainingResource fields that are TrainingConfig fields (resolved by legolas_ml.training.resolution).
_CONFIG_FIELDS = (
    "model_name", "model_init", "epochs", "max_length", "batch_size", "lr", "loss", "focal_gamma", "patience", "min_delta", "seed",
)


class TrainingResource(ConfigurableResource):
    """Training settings and where artifacts go.

    Every field left unset (``None``) is decided when the run starts by one resolver
    (``legolas_ml.training.resolution``: defaults < preset < ``LEGOLAS_*`` < run config < tenant),
    so a run config changes only the fields it names.
    """

    output_dir: str = Field(default="", description="working directory of the artifacts; empty = $LEGOLAS_HOME/output")
    artifacts_root: Optional[str] = Field(
        default=None, description="where the registry and the versions are published: s3://bucket/prefix, gs://bucket/prefix or "
        "a local directory; unset = LEGOLAS_ARTIFACTS, else output_dir itself (in place)",
    )
    model_name: Optional[str] = Field(default=None, description="bundled default, a Hugging Face id or a local path; unset = LEGOLAS_MODEL")
    model_init: Optional[str] = Field(default=None, description="'pretrained' or 'scratch' (architecture from config); unset = LEGOLAS_MODEL_INIT")
    model_overrides_json: Optional[str] = Field(default=None, description="JSON object of model config overrides; unset = LEGOLAS_MODEL_OVERRIDES")
    epochs: Optional[int] = Field(default=None, description="unset = LEGOLAS_EPOCHS, else the preset's")
    max_length: Optional[int] = Field(default=None, description="unset = LEGOLAS_MAX_LENGTH, else the preset's")
    batch_size: Optional[int] = Field(default=None, description="unset = LEGOLAS_BATCH_SIZE (default 16)")
    lr: Optional[float] = Field(default=None, description="peak learning rate; unset = LEGOLAS_LR, else the preset's")
    loss: Optional[str] = Field(default=None, description="'focal' or 'ce'; unset = the preset's")
    focal_gamma: Optional[float] = Field(default=None, description="unset = the preset's")
    patience: Optional[int] = Field(default=None, description="early stopping: epochs without improvement; unset = 5")
    min_delta: Optional[float] = Field(default=None, description="early stopping: the improvement that counts; unset = 0.001")
    seed: Optional[int] = Field(default=None, description="drives torch, the splitters and batch order; unset = 42")
    dataset_mode: str = Field(default="auto", description="'auto', 'first' or 'retrain' (operator override)")
    retrain_data: Optional[str] = Field(
        default=None,
        description="what a retraining trains on: 'reviews' (human only, the design notes' rule; a class with too few reviewed rows "
        "keeps its LLM rows), 'switch' (LLM + human labels until every class has retrain_min_reviews_per_class reviewed rows, "
        "then human only) or 'unflagged' (confident learning: the LLM labels the audit neither flags nor doubts + human); "
        "unset = LEGOLAS_RETRAIN_DATA (default 'reviews')",
    )
    retrain_min_reviews_per_class: Optional[int] = Field(
        default=None, description="'switch': reviewed training rows every class needs before LLM labels are dropped; unset = LEGOLAS_RETRAIN_MIN_REVIEWS_PER_CLASS (50)"
    )
    warm_start: Optional[bool] = Field(default=None, description="a retraining's folds start from the champion's fold weights; unset = LEGOLAS_WARM_START (on)")
    max_text_chars: int = Field(default=20_000, description="longer texts are quarantined")
    max_quarantine_share: float = Field(default=0.2, description="check: quarantined share of inputs must stay below")
    reuse_finished_folds: bool = Field(
        default=True, description="reuse a fold that finished with the same data, split and config (checksum verified)"
    )
    runner: Optional[str] = Field(default=None, description="where folds train: 'sequential', 'ray' or 'auto' (ray with >1 GPU); unset = LEGOLAS_RUNNER")
    ray_address: Optional[str] = Field(default=None, description="an existing Ray cluster ('auto', 'host:port' or 'ray://head:10001', docs/ray.md); empty = embedded; unset = LEGOLAS_RAY_ADDRESS")
    gpus_per_fold: Optional[float] = Field(default=None, description="Ray: GPU share per fold (0.25 packs 4 folds per GPU); -1 = auto; unset = LEGOLAS_GPUS_PER_FOLD")
    cpus_per_fold: Optional[float] = Field(default=None, description="Ray: CPUs per fold; unset = LEGOLAS_CPUS_PER_FOLD (1)")
    fold_retries: Optional[int] = Field(default=None, description="Ray: retries of a fold whose worker or node died; unset = LEGOLAS_FOLD_RETRIES (2)")

    def _or_setting(self, name: str, read) -> Any:
        """The field when the run config sets it, else the ``LEGOLAS_*`` setting read now."""
        value = getattr(self, name)
        return read() if value is None else value

    def retrain(self):
        """What a retraining trains on (``legolas_ml.data.quality_gate.RetrainData``), validated."""
        from legolas_ml.data.quality_gate import RetrainData

        return RetrainData(
            self._or_setting("retrain_data", settings.retrain_data),
            self._or_setting("retrain_min_reviews_per_class", settings.retrain_min_reviews_per_class),
        )

    def warm_start_enabled(self) -> bool:
        return bool(self._or_setting("warm_start", settings.warm_start))

    def fold_runner(self):
        """The fold runner of this run (``legolas_ml.runners``), validated."""
        from legolas_ml.runners import make_runner

        gpus = self._or_setting("gpus_per_fold", settings.gpus_per_fold)
        return make_runner(
            self._or_setting("runner", settings.runner), address=self._or_setting("ray_address", settings.ray_address) or None,
            gpus_per_fold=None if gpus < 0 else gpus, cpus_per_fold=self._or_setting("cpus_per_fold", settings.cpus_per_fold),
            max_retries=self._or_setting("fold_retries", settings.fold_retries),
        )

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # Every run and every sensor tick sets this resource up before any step asks for a `gpu`
        # pool slot: the moment to fail runs whose process was killed and free their slots.
        recovery.recover(context.instance, context.run_id, self.output_root(), context.log)

    def output_root(self) -> str:
        return self.output_dir or str(settings.output_dir())

    def artifact_store(self):
        """The ``ArtifactStore`` every tenant's registry and versions go through (``legolas_ml.core.storage``)."""
        from legolas_ml.core.storage import open_store

        return open_store(self.output_root(), self._or_setting("artifacts_root", settings.artifacts_root) or None)

    def artifacts(self, tenant: str) -> TenantArtifacts:
        return TenantArtifacts(self.output_root(), tenant, store=self.artifact_store())

    def registry(self, tenant: str) -> ModelRegistry:
        """The tenant's versions, read-only use (the holdout share is the lifecycle resource's business)."""
        return ModelRegistry(self.artifacts(tenant))

    def overrides(self) -> dict[str, Any]:
        """The ``TrainingConfig`` fields this resource's config sets (the ``run_config`` layer)."""
        values = {name: getattr(self, name) for name in _CONFIG_FIELDS if getattr(self, name) is not None}
        if self.model_overrides_json is not None:
            values["model_overrides"] = settings.json_object(self.model_overrides_json, "model_overrides_json")
        return values

    def resolved(self, gpu: "GPUResource | None" = None, tenant: "TenantPlan | None" = None) -> ResolvedTraining:
        """``tenant``'s training configuration and where each value came from (one resolver, run time)."""
        return resolve_training({**self.overrides(), **(gpu.overrides() if gpu is not None else {})}, tenant.settings if tenant else None)

    def config(self, gpu: "GPUResource | None" = None, tenant: "TenantPlan | None" = None) -> TrainingConfig:
        """The ``TrainingConfig`` of ``tenant``'s training: its own K, model, epochs and length where it sets them."""
        return self.resolved(gpu, tenant).config


class WorkspaceResource(ConfigurableResource):
    """Where the Dagster webserver answers, for sensors that ask it to reload the code location."""

    webserver_url: str = Field(
        default="", description="the webserver's http(s) URL (from LEGOLAS_DAGSTER_URL); empty = no webserver is asked"
    )


class LifecycleResource(ConfigurableResource):
    """The model lifecycle: evaluation holdout, promotion rule, retention, retraining retries."""

    holdout_share: float = Field(default=DEFAULT_HOLDOUT_SHARE, description="share of human-reviewed sessions held out of every training, (0, 1)")
    margin: float = Field(default=PromotionPolicy.margin, description="promotion: the non-inferiority margin on holdout balanced accuracy (lower bound of the difference must be above -margin)")
    max_recall_drop: float = Field(default=PromotionPolicy.max_recall_drop, description="promotion: recall a class with enough support may be shown to lose")
    min_class_support: int = Field(default=PromotionPolicy.min_class_support, description="promotion: holdout sessions a class needs for its recall to be judged")
    min_holdout: int = Field(default=PromotionPolicy.min_holdout, description="promotion: fewer holdout sessions decide nothing: the candidate waits as challenger")
    confidence: float = Field(default=PromotionPolicy.confidence, description="promotion: one-sided confidence of each bound at a candidate's first decision")
    challenger_confidence: float = Field(default=PromotionPolicy.challenger_confidence, description="promotion: the same at each later look at a waiting challenger")
    challenger_growth: float = Field(default=PromotionPolicy.challenger_growth, description="promotion: a challenger is looked at again once the holdout grew by this share")
    keep_decided: int = Field(default=5, description="retention: versions of the last N decisions and N promotions are kept")
    retry_backoff_s: int = Field(default=60, description="sensor: wait before retrying a failed retraining, doubled per attempt")
    retry_max_backoff_s: int = Field(default=3600, description="sensor: the longest wait between retries")
    max_attempts: int = Field(default=3, description="sensor: failed runs of the same reviews before waiting for new ones")

    def policy(self) -> PromotionPolicy:
        return PromotionPolicy(
            margin=self.margin, max_recall_drop=self.max_recall_drop, min_class_support=self.min_class_support,
            min_holdout=self.min_holdout, confidence=self.confidence, challenger_confidence=self.challenger_confidence,
            challenger_growth=self.challenger_growth,
        )

    def registry(self, training: "TrainingResource", tenant: str) -> ModelRegistry:
        validate_share(self.holdout_share)
        return ModelRegistry(training.artifacts(tenant))


class ReviewLoopResource(ConfigurableResource):
    """The loop: how the ensemble in service scores documents and which labels the audit sends to people.

    The rules' defaults are ``AuditSettings``'s own; a field set here replaces one for every tenant,
    and a tenant's own setting replaces both (``audit_settings``).
    """

    scoring_batch_size: int = Field(default=512, description="documents read, scored and written together")
    reasons: Optional[list[str]] = Field(default=None, description=f"audit reasons computed and recorded, among {list(REASONS)}; unset = all")
    flag_reasons: Optional[list[str]] = Field(
        default=None,
        description=f"audit reasons that flag a document, among {list(REASONS)}; the others are recorded on flagged documents, never flag; "
        f"unset = {list(FLAG_REASONS)}",
    )
    queue_size: Optional[int] = Field(default=None, description=f"at most this many documents wait in a tenant's review queue, highest priority first; unset = {AuditSettings.queue_size}")
    random_share: Optional[float] = Field(default=None, description=f"share of the queue drawn at random from the unflagged documents, in [0, 0.5]; unset = {AuditSettings.random_share}")
    min_confidence: Optional[float] = Field(default=None, description=f"low_confidence: the ensemble's top probability is below this; unset = {AuditSettings.min_confidence}")
    max_entropy: Optional[float] = Field(default=None, description=f"high_entropy: normalised entropy H(p)/log(C) above this; unset = {AuditSettings.max_entropy}")
    novelty_quantile: Optional[float] = Field(default=None, description=f"novelty: farther from the training data than this quantile of its own nearest distances; unset = {AuditSettings.novelty_quantile}")
    max_flagged_share: Optional[float] = Field(default=None, description=f"check: the share of audited documents flagged stays under this; unset = {AuditSettings.max_flagged_share}")

    def audit_settings(self, tenant: "TenantPlan | None" = None) -> AuditSettings:
        """The audit's rules: ``AuditSettings``'s defaults < this resource's fields < the tenant's own.

        Raises:
            ValueError: naming the field, its allowed values and the value received.
        """
        if self.scoring_batch_size < 1:
            raise ValueError(f"review.scoring_batch_size must be >= 1, got {self.scoring_batch_size}")
        own = tenant.settings if tenant is not None else None
        # AuditSettings field -> the tenant setting of the same rule (TenantSettings names two differently).
        tenant_names = {"reasons": "review_reasons", "flag_reasons": "review_flag_reasons"}
        values: dict[str, Any] = {}
        for name in ("reasons", "flag_reasons", "min_confidence", "max_entropy", "novelty_quantile", "max_flagged_share", "queue_size", "random_share"):
            mine = getattr(self, name)
            theirs = getattr(own, tenant_names.get(name, name), None) if own is not None else None
            value = theirs if theirs is not None else mine
            if value is not None:
                values[name] = tuple(value) if name in tenant_names else value
        return AuditSettings(**values)


def default_resources() -> dict[str, Any]:
    """Resources wired to the LEGOLAS_* variables, so `dagster dev` and the CLI need no run config.

    The resources hold no copy of the environment: their unset fields are resolved when a run starts
    (``legolas_ml.training.resolution``). The variables are still checked here, once, so a bad one
    fails the code location's load with one line instead of every run.

    Raises:
        ConfigurationError: one line naming the variable, its allowed values and what it holds.
    """
    with reported_in_one_line():
        resolve_training()
        for read in (settings.runner, settings.ray_address, settings.gpus_per_fold, settings.cpus_per_fold, settings.fold_retries,
                     settings.retrain_data, settings.retrain_min_reviews_per_class, settings.warm_start):
            read()
        return {"mongo": mongo_resource(), "gpu": GPUResource(), "training": TrainingResource()}
