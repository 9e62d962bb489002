"""Dagster resources: the Mongo store, the accelerator, and the training settings.

Every field can be set in run config (Launchpad or ``--config``) and defaults to an environment
variable, so a fresh clone trains on demo data in the embedded store with no configuration.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from dagster import ConfigurableResource, InitResourceContext, ResourceDefinition, ScalarUnion, Selector, StringSource
from dagster import Field as DagsterField
from pydantic import Field

from legolas_ml import settings
from legolas_ml.lifecycle.artifacts import TenantArtifacts, validate_tenant
from legolas_ml.lifecycle.holdout import DEFAULT_HOLDOUT_SHARE, validate_share
from legolas_ml.lifecycle.promotion import PromotionPolicy
from legolas_ml.lifecycle.registry import ModelRegistry
from legolas_ml.review.audit import FLAG_REASONS, REASONS, AuditSettings
from legolas_ml.training.config import DEFAULT_MODEL, TrainingConfig
from legolas_ml.training.modeling import device_description, resolve_device, resolve_precision
from legolas_ml.data.store import open_tenant_store, redact_uri

from . import recovery
from .configuration import ConfigurationError, reported_in_one_line

if TYPE_CHECKING:
    from .tenancy import TenantPlan

# The presets, K and every other LEGOLAS_* variable are parsed by legolas_ml.settings; preset()
# and preset_name() stay importable from here for the asset modules.
preset = settings.preset
preset_name = settings.preset_name


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
    """The accelerator folds train on: ``auto`` picks CUDA when present and falls back to the CPU."""

    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    precision: str = Field(default="auto", description="'auto' (bf16 where native), 'fp32', 'bf16' or 'fp16'")

    def resolved(self) -> dict[str, Any]:
        """Device and precision actually used, with the device's name and memory."""
        device = resolve_device(self.device)
        return {**device_description(device), "precision": resolve_precision(self.precision, device)}


class TrainingResource(ConfigurableResource):
    """Training settings and where artifacts go. K-fold layout (K, simple mode) comes from the preset."""

    output_dir: str = Field(default="", description="artifacts root; empty = $LEGOLAS_HOME/output")
    model_name: str = Field(default=DEFAULT_MODEL, description="bundled default, a Hugging Face id or a local path")
    model_init: str = Field(default="pretrained", description="'pretrained' or 'scratch' (architecture from config)")
    model_overrides_json: str = Field(default="{}", description="JSON object of model config overrides")
    epochs: int = Field(default=0, description="0 = the preset's")
    max_length: int = Field(default=0, description="0 = the preset's")
    batch_size: int = 16
    lr: float = 5e-5
    loss: str = Field(default="focal", description="'focal' or 'ce'")
    focal_gamma: float = 2.0
    patience: int = 5
    min_delta: float = 0.001
    seed: int = 42
    dataset_mode: str = Field(default="auto", description="'auto', 'first' or 'retrain' (operator override)")
    retrain_data: str = Field(
        default="reviews",
        description="what a retraining trains on: 'reviews' (human only, the design notes' rule; a class with too few reviewed rows "
        "keeps its LLM rows), 'switch' (LLM + human labels until every class has retrain_min_reviews_per_class reviewed rows, "
        "then human only) or 'unflagged' (confident learning: the LLM labels the audit neither flags nor doubts + human)",
    )
    retrain_min_reviews_per_class: int = Field(default=50, description="'switch': reviewed training rows every class needs before LLM labels are dropped")
    warm_start: bool = Field(default=True, description="a retraining's folds start from the champion's fold weights")
    max_text_chars: int = Field(default=20_000, description="longer texts are quarantined")
    max_quarantine_share: float = Field(default=0.2, description="check: quarantined share of inputs must stay below")
    reuse_finished_folds: bool = Field(
        default=True, description="reuse a fold that finished with the same data, split and config (checksum verified)"
    )
    runner: str = Field(default="sequential", description="where folds train: 'sequential', 'ray' or 'auto' (ray with >1 GPU)")
    ray_address: str = Field(default="", description="an existing Ray cluster ('auto', 'ray://head:10001'); empty = embedded")
    gpus_per_fold: float = Field(default=-1.0, description="Ray: GPU share per fold (0.25 packs 4 folds per GPU); -1 = auto")
    cpus_per_fold: float = Field(default=1.0, description="Ray: CPUs per fold")
    fold_retries: int = Field(default=2, description="Ray: retries of a fold whose worker or node died")

    def retrain(self):
        """What a retraining trains on (``legolas_ml.data.quality_gate.RetrainData``), validated."""
        from legolas_ml.data.quality_gate import RetrainData

        return RetrainData(self.retrain_data, self.retrain_min_reviews_per_class)

    def fold_runner(self):
        """The fold runner of this run (``legolas_ml.runners``), validated."""
        from legolas_ml.runners.base import make_runner

        return make_runner(
            self.runner, address=self.ray_address or None, gpus_per_fold=None if self.gpus_per_fold < 0 else self.gpus_per_fold,
            cpus_per_fold=self.cpus_per_fold, max_retries=self.fold_retries,
        )

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # Every run and every sensor tick sets this resource up before any step asks for a `gpu`
        # pool slot: the moment to fail runs whose process was killed and free their slots.
        recovery.recover(context.instance, context.run_id, self.output_root(), context.log)

    def output_root(self) -> str:
        return self.output_dir or str(settings.output_dir())

    def artifacts(self, tenant: str) -> TenantArtifacts:
        return TenantArtifacts(self.output_root(), tenant)

    def registry(self, tenant: str) -> ModelRegistry:
        """The tenant's versions, read-only use (the holdout share is the lifecycle resource's business)."""
        return ModelRegistry(self.artifacts(tenant))

    def config(self, gpu: GPUResource, tenant: "TenantPlan") -> TrainingConfig:
        """The ``TrainingConfig`` of ``tenant``'s training: its own K, model, epochs and length where it sets them."""
        base, own = tenant.layout, tenant.settings
        try:
            overrides = json.loads(self.model_overrides_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model_overrides_json must be a JSON object, got {self.model_overrides_json!r}: {exc}") from None
        if not isinstance(overrides, dict):
            raise ValueError(f"model_overrides_json must be a JSON object, got {self.model_overrides_json!r}")
        config = TrainingConfig(
            n_folds=base["n_folds"],
            kfold=base["kfold"],
            epochs=own.epochs or self.epochs or preset()["epochs"],
            max_length=own.max_length or self.max_length or preset()["max_length"],
            batch_size=self.batch_size,
            lr=self.lr,
            loss=self.loss,
            focal_gamma=self.focal_gamma,
            patience=self.patience,
            min_delta=self.min_delta,
            seed=self.seed,
            model_name=own.model_name or self.model_name,
            model_init=self.model_init,
            model_overrides=overrides,
            freeze_layers=preset().get("freeze_layers", 0),  # the demo preset's lever; real use trains every layer
            device=gpu.device,
            precision=gpu.precision,
        )
        config.validate()
        return config


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
    """The loop: how the ensemble in service scores documents and which labels the audit sends to people."""

    scoring_batch_size: int = Field(default=512, description="documents read, scored and written together")
    reasons: list[str] = Field(default=list(REASONS), description=f"audit reasons computed and recorded, among {list(REASONS)}")
    flag_reasons: list[str] = Field(
        default=list(FLAG_REASONS),
        description=f"audit reasons that flag a document, among {list(REASONS)}; the others are recorded on flagged documents, never flag",
    )
    queue_size: int = Field(default=AuditSettings.queue_size, description="at most this many documents wait in a tenant's review queue, highest priority first")
    random_share: float = Field(default=AuditSettings.random_share, description="share of the queue drawn at random from the unflagged documents, in [0, 0.5]")
    min_confidence: float = Field(default=0.7, description="low_confidence: the ensemble's top probability is below this")
    max_entropy: float = Field(default=0.5, description="high_entropy: normalised entropy H(p)/log(C) above this")
    novelty_quantile: float = Field(default=0.99, description="novelty: farther from the training data than this quantile of its own nearest distances")
    max_flagged_share: float = Field(default=0.3, description="check: the share of audited documents flagged stays under this")

    def audit_settings(self, tenant: "TenantPlan | None" = None) -> AuditSettings:
        """The audit's rules, with the tenant's own where it sets them.

        Raises:
            ValueError: naming the field, its allowed values and the value received.
        """
        if self.scoring_batch_size < 1:
            raise ValueError(f"review.scoring_batch_size must be >= 1, got {self.scoring_batch_size}")
        own = tenant.settings if tenant is not None else None

        def pick(name: str, value):
            theirs = getattr(own, name, None) if own is not None else None
            return value if theirs is None else theirs

        return AuditSettings(
            reasons=tuple(pick("review_reasons", tuple(self.reasons))), min_confidence=pick("min_confidence", self.min_confidence),
            flag_reasons=tuple(pick("review_flag_reasons", tuple(self.flag_reasons))),
            max_entropy=pick("max_entropy", self.max_entropy), novelty_quantile=self.novelty_quantile,
            max_flagged_share=pick("max_flagged_share", self.max_flagged_share),
            queue_size=pick("queue_size", self.queue_size), random_share=pick("random_share", self.random_share),
        )


def default_resources() -> dict[str, Any]:
    """Resources wired to the LEGOLAS_* variables, so `dagster dev` and the CLI need no run config.

    Raises:
        ConfigurationError: one line naming the variable, its allowed values and what it holds.
    """
    with reported_in_one_line():
        base = preset()
        return {
            "mongo": mongo_resource(),
            "gpu": GPUResource(device=settings.device(), precision=settings.precision()),
            "training": TrainingResource(
                model_name=settings.model_name(),
                model_init=settings.model_init(),
                model_overrides_json=json.dumps(settings.model_overrides()),
                epochs=settings.epochs() or base["epochs"],
                max_length=settings.max_length() or base["max_length"],
                batch_size=settings.batch_size(),
                lr=settings.lr() or base["lr"],
                loss=base["loss"],
                focal_gamma=base["focal_gamma"],
                runner=settings.runner(),
                ray_address=settings.ray_address(),
                gpus_per_fold=settings.gpus_per_fold(),
                cpus_per_fold=settings.cpus_per_fold(),
                fold_retries=settings.fold_retries(),
                retrain_data=settings.retrain_data(),
                retrain_min_reviews_per_class=settings.retrain_min_reviews_per_class(),
                warm_start=settings.warm_start(),
            ),
        }
