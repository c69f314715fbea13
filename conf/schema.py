"""Typed schema of the composed pipeline config.

Every stage receives one :class:`PipelineConfig` and reads only its own section. All models
forbid unknown keys, so a typo in YAML or on the command line is an error that names the key
(and, through :mod:`conf.loading`, the file that set it) instead of silently becoming a
default. Defaults live in the YAML files under ``conf/``, not here: fields without a YAML
value are required.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(Section):
    """Where data lives. Plain paths or URIs (``file://``, ``hdfs://``, ``s3a://`` ...).

    ``{dataset}`` in a value is replaced by the dataset preset's name; relative local paths are
    resolved against the working directory when the config is loaded.
    """

    raw_dir: str  # folder holding the raw public files (dataset.files are relative to it)
    work_dir: str  # stage outputs: <work_dir>/ingest, <work_dir>/index, <work_dir>/train


class PublishedSizes(Section):
    """Sizes a paper reports for a dataset after its own filtering; ingest logs ours beside them."""

    users: int = Field(gt=0)
    items: int = Field(gt=0)
    interactions: int = Field(gt=0)


# Formats whose lines carry a rating; they need positive_min_rating and rating_scale.
# (recbole_inter's rating column is optional: its reader asks for them when the header has one.)
RATED_FORMATS = ("ratings", "amazon_ratings", "amazon_ratings_2018", "amazon_reviews",
                 "yelp_reviews", "movielens_100k", "movielens_1m")


class AtomicFields(Section):
    """Which columns of a RecBole atomic ``.inter`` header (``dataset.format: recbole_inter``,
    spark_jobs/readers/recbole_atomic.py) hold what: RecBole's ``USER_ID_FIELD``,
    ``ITEM_ID_FIELD``, ``TIME_FIELD`` and ``RATING_FIELD``, by name."""

    user: str  # a token column
    item: str  # a token column
    time: str  # a float column: Unix seconds
    rating: str | None  # a float column, read when the header has one; null: never read

    @model_validator(mode="after")
    def _distinct(self) -> AtomicFields:
        names = [n for n in (self.user, self.item, self.time, self.rating) if n is not None]
        if len(set(names)) != len(names):
            raise ValueError(f"user, item, time and rating name one column each, got {names}")
        return self


class DatasetConfig(Section):
    """Facts of one dataset preset (SCoRe paper, Table 2 and Section 4.1.1; DualRec and DFAR
    Section 4.1).

    The time window is in local days of ``timezone``. Sliced data (SCoRe's protocol) sets
    ``start``, ``slice_days`` and ``num_slices``; its window ends after the last slice and
    ``last_day`` stays null. Unsliced data sets ``slice_days`` and ``num_slices`` to null and
    may bound its window by ``start`` and/or ``last_day`` (inclusive), or set both null for
    no window (Amazon); Yelp keeps 2019-01-01 .. 2019-12-31 as S3-Rec.
    """

    name: str
    format: Literal["taobao", "tmall", "ratings", "amazon_ratings", "amazon_ratings_2018",
                    "amazon_reviews", "yelp_reviews", "s3rec", "movielens_100k",
                    "movielens_1m", "recbole_inter"]
    files: list[str] = Field(min_length=1)  # glob patterns relative to paths.raw_dir
    timezone: str  # window and slice boundaries are local midnights in this zone
    start: dt.date | None  # first local day kept (slice 0's first day when sliced)
    slice_days: int | None = Field(gt=0)  # ΔT; null: no slices
    num_slices: int | None = Field(ge=4)  # T; train/valid/test need slices T-2, T-1, T
    last_day: dt.date | None  # last local day kept (inclusive); only for unsliced data
    behaviors: list[str] = Field(min_length=1)  # behaviour codes kept as interactions
    positive_min_rating: float | None  # ratings >= this are positive feedback (label 1)
    negative_max_rating: float | None  # ratings <= this are real negatives (label 0)
    rating_scale: tuple[float, float] | None  # [min, max] valid ratings; others quarantined
    kcore: int = Field(ge=0)  # 0 disables k-core filtering
    # iterative: drop users and items under kcore until none is left (S3-Rec's 5-core).
    # items_then_users: one pass, items under kcore, then users under kcore (DFAR's code).
    kcore_mode: Literal["iterative", "items_then_users"]
    # s3rec only: <Name>_sample.txt beside the sequences (relative to paths.raw_dir), one line
    # `uid n1 .. nN` per sequence line, read into ingest/fixed_negatives; null: none.
    negatives_file: str | None
    negatives_count: int = Field(gt=0)  # N ids each negatives_file line must hold (S3-Rec: 99)
    atomic_fields: AtomicFields  # recbole_inter only: the header's user/item/time/rating columns
    # the paper's sizes after its filtering, shown beside ours; for a generated sample, those
    # of the real log it imitates
    published: PublishedSizes | None
    drop_duplicates: bool  # exact duplicate rows dropped and counted
    # fixed: use start as given. latest: the flow moves start so the window covers the
    # latest num_slices complete slices of the raw data (flows/window.py), for retraining.
    window: Literal["fixed", "latest"]

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except Exception as exc:  # ZoneInfoNotFoundError or ValueError on odd names
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _window_rules(self) -> DatasetConfig:
        if (self.slice_days is None) != (self.num_slices is None):
            raise ValueError("slice_days and num_slices are set together (sliced data) or "
                             "both null (unsliced data)")
        if self.sliced and (self.start is None or self.last_day is not None):
            raise ValueError("sliced data needs start and no last_day (the window ends "
                             "after the last slice)")
        if self.window == "latest" and not self.sliced:
            raise ValueError("window: latest moves the slices; it needs slice_days and "
                             "num_slices")
        if self.start is not None and self.last_day is not None and self.last_day < self.start:
            raise ValueError("last_day must not be before start")
        if self.negatives_file is not None and self.format != "s3rec":
            raise ValueError("negatives_file is read only with format 's3rec'")
        if self.format == "s3rec" and (self.start is not None or self.last_day is not None):
            raise ValueError("format 's3rec' has no timestamps (ts is the item's position in "
                             "its line): start and last_day must be null")
        return self

    @model_validator(mode="after")
    def _ratings_rules(self) -> DatasetConfig:
        if self.format in RATED_FORMATS and (
            self.positive_min_rating is None or self.rating_scale is None
        ):
            raise ValueError(f"format {self.format!r} needs positive_min_rating and "
                             "rating_scale")
        if self.rating_scale is not None and self.rating_scale[0] > self.rating_scale[1]:
            raise ValueError("rating_scale must be [min, max] with min <= max")
        if (
            self.positive_min_rating is not None
            and self.negative_max_rating is not None
            and self.negative_max_rating >= self.positive_min_rating
        ):
            raise ValueError("negative_max_rating must be below positive_min_rating")
        return self

    @property
    def sliced(self) -> bool:
        """Whether the data is cut into time slices (SCoRe's protocol)."""
        return self.slice_days is not None

    @property
    def end(self) -> dt.date | None:
        """First local day after the window (exclusive end); None when unbounded."""
        if self.sliced:
            return self.start + dt.timedelta(days=self.slice_days * self.num_slices)
        return None if self.last_day is None else self.last_day + dt.timedelta(days=1)

    def window_bounds(self) -> tuple[int | None, int | None]:
        """[start, end) of the window as UTC seconds of local midnights; None: unbounded."""
        return self._midnight(self.start), self._midnight(self.end)

    def slice_bounds(self) -> list[int]:
        """UTC seconds of each slice's first local midnight, then the window's end: T+1
        increasing values; slice t holds ``bounds[t] <= ts < bounds[t+1]``.

        Raises:
            ValueError: the dataset has no slices.
        """
        if not self.sliced:
            raise ValueError(f"dataset {self.name!r} has no slices (slice_days and num_slices "
                             "are null)")
        return [self._midnight(self.start + dt.timedelta(days=self.slice_days * t))
                for t in range(self.num_slices + 1)]

    def _midnight(self, day: dt.date | None) -> int | None:
        if day is None:
            return None
        return int(dt.datetime.combine(day, dt.time(0), tzinfo=ZoneInfo(self.timezone)).timestamp())


class GenerateConfig(Section):
    """Synthetic sample in the dataset's public format (see spark_jobs/sample_data.py)."""

    rows: int = Field(gt=0)
    users: int = Field(gt=0)
    items: int = Field(gt=0)
    categories: int = Field(gt=0)
    communities: int = Field(gt=0)  # latent user/item groups that drive co-interaction
    # How much of a user's choices its tastes explain (spark_jobs/sample_data.py, point 4):
    # the main community's share, the drifting second interest's; the rest is noise.
    main_share: float = Field(ge=0.0, le=1.0)
    drift_share: float = Field(ge=0.0, le=1.0)
    item_zipf: float = Field(ge=0.0)  # item weight rank^-a inside a community: popularity skew
    # Share of the rows that are neither a user's first nor a repeat that take one of the
    # previous item's successors instead (spark_jobs/sample_data.py, point 5): the order
    # signal of real logs; 0 draws none.
    transition_share: float = Field(ge=0.0, lt=1.0)
    seed: int
    malformed_rate: float = Field(ge=0.0, le=1.0)  # share of lines deliberately broken
    chunk_rows: int = Field(gt=0)  # rows generated and written per chunk (bounds memory)
    auto: bool  # the flow (re)generates paths.raw_dir when missing or stale (sample presets)

    @model_validator(mode="after")
    def _shares_leave_noise(self) -> GenerateConfig:
        if self.main_share + self.drift_share > 1.0:
            raise ValueError(f"main_share + drift_share = {self.main_share + self.drift_share} "
                             "exceeds 1 (the rest of the choices are noise)")
        return self


class SparkConfig(Section):
    """How Spark runs: ``local[*]`` by default, any master by config."""

    master: str
    app_name: str
    driver_memory: str  # only effective when this process starts the JVM
    # JVM flags of the driver (the executor too under local[*]), beside seqrec's log4j ones;
    # like driver_memory, only effective when this process starts the JVM
    driver_java_options: str
    shuffle_partitions: int = Field(gt=0)
    broadcast_max_ids: int = Field(ge=0)  # ingest broadcasts id maps up to this many ids
    conf: dict[str, str]  # any further spark.* settings, passed through unchanged


# The evaluation protocols (docs/architecture.md, "Evaluation protocols"): the one list of
# their names. The trainers' side of each is an object in trainers/protocols.py; the Spark
# side a builder in spark_jobs/index.py's table.
ProtocolName = Literal["slices", "leave_one_out", "feedback"]
PROTOCOLS: tuple[str, ...] = get_args(ProtocolName)
SLICES, LEAVE_ONE_OUT, FEEDBACK = PROTOCOLS
# An index manifest written before manifests named their protocol is a slices index.
LEGACY_PROTOCOL = SLICES


class IndexConfig(Section):
    """Index stage: the evaluation protocol and its samples (docs/architecture.md,
    "Evaluation protocols"); slices also build SCoRe's graph indices (Sections 2 and 4.1.1)."""

    protocol: ProtocolName
    # slices, valid/test: one list per (user, target slice) with a seeded positive (Section
    # 4.1.1), or one per (user, positive) of the target slice.
    lists_per_user: Literal["one", "every_positive"]
    # slices, train: every positive of the target slice is a training row (Section 4.1.1,
    # "the training set contains the sequential behaviors" of the slice), or one seeded
    # positive per (user, slice) as the released code's target file (qinjr/SCoRe).
    train_lists_per_user: Literal["every_positive", "one"]
    # slices: training targets from slice T-3 only (paper), or from every slice 1..T-3.
    train_targets: Literal["paper", "every_slice"]
    # feedback: each user's last active day test, the one before valid (paper); 12:00 of
    # the dataset's last day (Micro-video); or each user's last / second-last interaction.
    feedback_split: Literal["user_days", "global_noon", "leave_one_out"]
    set_size: int = Field(gt=0)  # S
    neighbor_cap: int = Field(gt=0)  # most 1-hop neighbours entering a 2-hop union (seeded)
    eval_negatives: int = Field(gt=0)  # N negatives per evaluation list (paper: 100)
    train_negatives: int = Field(gt=0)  # sampled negatives per training positive
    # uniform (papers); popularity: 1 + positives (DFAR's code); active (slices): uniform
    # over items with positives in >= active_min_slices of the T slices (SCoRe's code).
    negative_sampling: Literal["uniform", "popularity", "active"]
    active_min_slices: int = Field(gt=0)  # the code's pop_standard: Taobao 6 of 9, Tmall 9
    resample_train_negatives: bool  # True: fresh negatives each epoch; False: fixed in Parquet
    max_eval_users: int | None  # seeded cap on evaluation users (original Taobao code did so)
    sequence_max_len: int = Field(gt=0)  # L for single-sequence models
    seed: int

    @model_validator(mode="after")
    def _active_needs_slices(self) -> IndexConfig:
        if self.negative_sampling == "active" and self.protocol != SLICES:
            raise ValueError("negative_sampling: active counts the slices an item is active "
                             f"in; protocol {self.protocol!r} has none: use uniform or "
                             "popularity")
        return self


class ModelConfig(Section):
    """Which registered model to build and its hyper-parameters.

    ``params`` is validated against the model's own config class when the model is built
    (trainers/registry.py), so each model file owns its hyper-parameter schema.
    """

    name: str
    params: dict[str, object]


class TrainConfig(Section):
    """One training loop for every model (trainers/train.py)."""

    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    eval_batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    l2: float = Field(ge=0)  # λ of Eq. 25
    weight_decay: float = Field(ge=0)  # Adam's L2 on every parameter (DualRec code: 1e-4)
    # l2: coupled to Adam's gradient; decoupled: AdamW, biases and LayerNorms not decayed
    weight_decay_mode: Literal["l2", "decoupled"]
    # epochs without gain of the selection metric (valid MRR; valid AUC under feedback)
    patience: int = Field(ge=1)
    min_epochs: int = Field(ge=0)  # no early stop before this many epochs (a first-epochs dip)
    lr_plateau_patience: int | None = Field(ge=1)  # halve lr after this many; None: off
    # the n-th optimiser step's lr is lr * n / lr_warmup_steps while n < lr_warmup_steps, then
    # lr * (1 - min(n, lr_decay_steps) / lr_decay_steps) (BERT's linear warmup and decay;
    # 0 and None: constant)
    lr_warmup_steps: int = Field(ge=0)
    lr_decay_steps: int | None = Field(ge=1)
    grad_clip: float | None = Field(gt=0)  # max global norm of dense gradients; None: off
    seed: int
    num_workers: int = Field(ge=1)  # Ray Train workers
    use_gpu: bool
    cpus_per_worker: float = Field(gt=0)  # fractional on small boxes (STACK.md, Ray trap)
    ray_address: str | None  # None: start a local Ray; "auto" or ray://host:port: a cluster
    max_failures: int = Field(ge=-1)  # restarts from the latest checkpoint (-1: unlimited)
    # nice value of the workers of a Ray this run starts (Ray's own default is 15)
    worker_niceness: int = Field(ge=0, le=19)
    # Ray Train's controller asks the workers how they stand this often (Ray's default 2 s)
    health_check_s: float = Field(gt=0)
    # users whose test target is ranked against every item: "all" or a seeded sample of N
    # (0 disables); models without an item table (target-aware) rank at most
    # full_rank_sample of them, through forward (trainers/evaluate.py)
    full_rank_users: Literal["all"] | Annotated[int, Field(ge=0)]
    full_rank_sample: int = Field(ge=0)
    # lazy: Adam on the rows a batch touches (Taobao-sized tables); dense: Adam on whole
    # tables, every row every step, as the papers' code (trainers/embedding.py)
    embedding_updates: Literal["lazy", "dense"]
    # leave_one_out training rows: the L events before the index's train target (last), or
    # each epoch a random contiguous window of L events + its target ending at or before
    # it (random: DualRec's released code, so events before a long history's last L train too)
    window: Literal["last", "random"]
    # shuffled: i.i.d. batches; by_length: shuffled, then rows of similar history length
    # batched together (a bucketing iterator), so a variable_length model's batches are cut
    # to their longest history (short sequences, as Amazon's, then cost a fraction of L)
    batch_order: Literal["shuffled", "by_length"]
    run_name: str | None  # run directory <work>/train/<run_name>; None: the model's name

    @model_validator(mode="after")
    def _decay_after_warmup(self) -> TrainConfig:
        if self.lr_decay_steps is not None and self.lr_decay_steps <= self.lr_warmup_steps:
            raise ValueError(f"train.lr_decay_steps ({self.lr_decay_steps}) must exceed "
                             f"train.lr_warmup_steps ({self.lr_warmup_steps}): the lr would "
                             "be 0 from the end of the warmup on")
        return self


class TrackingConfig(Section):
    """MLflow tracking and model registry."""

    uri: str  # sqlite:///... by default; any tracking server URI by config
    artifact_location: str  # where new experiments put artifacts
    experiment: str
    registered_model: str | None  # None: name it after the deployment / dataset+model


class FlowConfig(Section):
    """Prefect orchestration (flows/)."""

    retries: int = Field(ge=0)
    retry_delay_seconds: float = Field(ge=0)
    schedule_cron: str | None
    schedule_active: bool
    work_pool: str
    # a new champion must also beat popularity (and random under feedback) on validation
    champion_floor: bool
    recommend: bool  # top-K for every user after register (``seqrec recommend``, issue 24)
    # one run of a deployment at a time on the Prefect server; a second waits (ENQUEUE) or
    # is cancelled (CANCEL_NEW)
    concurrency_limit: int = Field(ge=1)
    collision_strategy: Literal["ENQUEUE", "CANCEL_NEW"]
    # another host's work-folder lock older than this is reported as probably stale
    lock_stale_hours: float = Field(gt=0)


class RecommendConfig(Section):
    """Top-K recommendations from a registered model (trainers/recommend.py)."""

    k: int = Field(ge=1)  # items per user
    exclude_seen: bool  # items the user already interacted with are never recommended
    # target-aware models rerank this many most popular items (unseen ones, by exclude_seen)
    candidates: int = Field(ge=1)
    users_per_batch: int = Field(ge=1)  # users one actor scores at once
    # Ray Data actors, each holding one copy of the model; 0: score in the driver process
    # (no Ray start-up, for small data)
    actors: int = Field(ge=0)


class TableConfig(Section):
    """What a paper sets for every model of its comparison table (a dataset preset's
    ``table:``): model hyper-parameters, laid over each model preset that has them, and a
    training recipe, laid over every model preset's own ``train:`` (conf/loading.py)."""

    params: dict[str, object]
    train: dict[str, object]  # train keys, e.g. DFAR's {lr: 0.0001, batch_size: 200}


class SweepConfig(Section):
    """Ray Tune sweeps of any settings (trainers/sweep.py, ``seqrec tune``)."""

    # dotted config key -> values to try, e.g. {"model.params.lambda_bpr": [1e-4, 1e-3]};
    # model presets set their paper's grid (DFAR: Appendix A.4)
    space: dict[str, list[Any]]
    # named override sets, e.g. a paper's ablation table: {"w/o MO": {"model.params.
    # label_mask": false}}; {} is the config as composed. Run by mode: variants.
    variants: dict[str, dict[str, Any]]
    # one key of space at a time (others fixed), the product of space, or each variant
    mode: Literal["one_at_a_time", "grid", "variants"]
    metric: str  # reported trial metric that picks the best trial and is plotted (valid_*)
    max_concurrent: int = Field(ge=1)  # trials at once; each takes its Ray Train workers' CPUs

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # every config value becomes an MLflow param named by its dotted path
        bad = [name for name in value if not re.fullmatch(r"[A-Za-z0-9_\- :/]+", name)]
        if bad:
            raise ValueError(f"sweep variant names {bad} may hold only letters, digits, "
                             "spaces and _ - : / (they become MLflow parameter names)")
        return value


class PipelineConfig(Section):
    """The one composed config that travels through every stage."""

    profile: str
    paths: PathsConfig
    dataset: DatasetConfig
    generate: GenerateConfig
    spark: SparkConfig
    index: IndexConfig
    model: ModelConfig
    train: TrainConfig
    tracking: TrackingConfig
    flow: FlowConfig
    recommend: RecommendConfig
    sweep: SweepConfig
    table: TableConfig

    @model_validator(mode="after")
    def _active_slices_fit(self) -> PipelineConfig:
        T = self.dataset.num_slices
        if (self.index.negative_sampling == "active" and T is not None
                and self.index.active_min_slices > T):
            raise ValueError(f"index.active_min_slices {self.index.active_min_slices} exceeds "
                             f"dataset.num_slices {T}: no item could be active in that many "
                             "slices")
        return self
