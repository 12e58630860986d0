"""One typed settings object for loopbot, fed by the environment and `.env`.

Each section has its own prefix (``LOOPBOT_MODEL_``, ``LOOPBOT_KB_``, ...); every variable is
documented in ``.env.example``. Secrets (``DISCORD_TOKEN``) live in :class:`Secrets`, which has no
defaults and is only loaded by the command that needs it, so ``loopbot ask`` runs without a token.

A missing or invalid value raises :class:`SettingsError` whose message names the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from adapters.prompt import DEFAULT_SYSTEM_PROMPT


class SettingsError(RuntimeError):
    """A setting is missing or invalid; the message names the environment variable."""


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", env_file_encoding="utf-8", extra="ignore")


class ModelSettings(BaseSettings):
    """The base model, its adapter and how it generates (prefix ``LOOPBOT_MODEL_``)."""

    model_config = _config("LOOPBOT_MODEL_")

    base: str = Field("", description="GPTQ checkpoint: local path or hub id. Empty: the offline default.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: str = Field("auto", description="gptqmodel kernel used to serve (auto, torch, ...).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: fp16 on CUDA, bf16 for GPTQ on CPU (fastest kernel path), else fp32."
    )
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 keeps torch's default.")
    max_new_tokens: int = Field(96, ge=1, le=8192, description="Longest answer in tokens.")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    repetition_penalty: float = Field(
        1.0,
        ge=1.0,
        le=2.0,
        description="Penalise tokens the answer already used (1.0: off), never the prompt's.",
    )
    max_sentences: int = Field(
        2, ge=0, description="Answers keep at most this many sentences (0: no budget)."
    )
    max_batch: int = Field(8, ge=1, le=256, description="Questions decoded together (continuous batching).")
    max_waiting: int = Field(
        32, ge=0, description="Members' questions that may wait beyond those; the next is told to retry."
    )
    native_decode: bool = Field(
        True,
        description="Decode steps through the native kernels (compiled once per machine; needs a C++ "
        "compiler), else the Python decode step.",
    )
    adapter_min_similarity: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="An adapter answers only questions this close (cosine) to a corrected one it was taught; "
        "the base answers the rest (0: the adapter answers every question).",
    )
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    offline: bool = Field(True, description="Never contact a model hub (HF_HUB_OFFLINE=1).")
    server_url: str = Field("", description="OpenAI-compatible server (vLLM); empty: generate in-process.")
    server_api_key: SecretStr = Field(
        SecretStr(""), description="Bearer token for server_url, if it needs one."
    )


class KnowledgeSettings(BaseSettings):
    """The Chroma knowledge base and ingestion limits (prefix ``LOOPBOT_KB_``)."""

    model_config = _config("LOOPBOT_KB_")

    embedding_model: str = Field(
        "", description="sentence-transformers name or path; empty: packaged MiniLM."
    )
    chroma_host: str = Field("", description="Chroma server host; empty: embedded store under the data dir.")
    chroma_port: int = Field(8000, ge=1, le=65535)
    top_k: int = Field(5, ge=1, le=50)
    max_context_tokens: int = Field(
        1024, ge=64, description="Token budget of the context passages in a prompt."
    )
    min_relevance: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Passages below this cosine (and not matched lexically) are not used.",
    )
    relevance_margin: float | None = Field(
        0.1, ge=0.0, le=1.0, description="Passages further than this below the best one are not used."
    )
    max_passages: int = Field(2, ge=0, description="At most this many passages in a prompt (0: top_k).")
    word_match_weight: float = Field(
        1.0,
        ge=0.0,
        le=2.0,
        description="Weight of the word (BM25) ranking fused with the dense one for Latin-script questions.",
    )
    quote_evidence: bool = Field(
        True,
        description="Quote the passage sentence that best answers under each answer (or instead of it).",
    )
    chunk_size: int = Field(
        800, ge=100, description="Most characters per chunk, cut at section and sentence ends (CJK counts 3)."
    )
    max_file_mb: float = Field(10.0, gt=0)
    max_files: int = Field(100, ge=1)


class DiscordSettings(BaseSettings):
    """How the bot behaves in Discord (prefix ``LOOPBOT_DISCORD_``). The token is in :class:`Secrets`."""

    model_config = _config("LOOPBOT_DISCORD_")

    admin_role: str = "loopbot-admin"
    curator_role: str = "loopbot-curator"
    allowed_channels: list[int] = Field(default_factory=list, description="Channel ids; empty: all channels.")
    upvote_emoji: str = "👍"
    downvote_emoji: str = "👎"
    correction_votes: int = Field(3, ge=1, description="👍 a stranger's correction needs to be accepted.")
    rate_limit_per_minute: int = Field(6, ge=0, description="Questions per member per minute; 0: no limit.")
    write_limit_per_minute: int = Field(
        5,
        ge=0,
        description="/add, /remember, /forget and corrections per member per minute, each; 0: no limit.",
    )
    max_question_chars: int = Field(1500, ge=10, description="Longest question accepted, in characters.")
    edit_interval: float = Field(1.0, gt=0, description="Seconds between streamed edits of an answer.")
    train_schedule_minutes: int = Field(0, ge=0, description="Run `train --if-needed` this often; 0: never.")
    registry_poll_seconds: float = Field(
        5.0, ge=0, description="How often the bot looks for a CLI promote, rollback or train; 0: never."
    )


class TrainSettings(BaseSettings):
    """LoRA retraining and the promotion gate (prefix ``LOOPBOT_TRAIN_``)."""

    model_config = _config("LOOPBOT_TRAIN_")

    rank: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    target_modules: str = Field(
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        min_length=1,
        description="Comma-separated layers LoRA adapts: all seven projections learned 20 of 20 facts, "
        "attention only 14 (bench/learning_proof.py).",
    )
    epochs: float = Field(
        5.0, gt=0, description="Passes over the pairs and anchors in a run that teaches no fact (👍 answers)."
    )
    steps: int = Field(0, ge=0, description="Optimizer steps per run; 0: from the epochs settings.")
    until_learned: bool = Field(
        True,
        description="A run with taught facts (corrections, imports) checks after each pass from min_epochs "
        "whether it answers every taught question word for word and stops when it does (at most max_epochs "
        "passes); false: epochs passes.",
    )
    min_epochs: float = Field(2.0, gt=0, description="Passes before the first learned check.")
    max_epochs: float = Field(12.0, gt=0, description="Most passes a run with taught facts makes.")
    batch_size: int = Field(2, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    dequantize: bool = Field(
        True,
        description="Dequantize the frozen base once for training: the same logits, steps 29-33 % faster, "
        "+0.4 GB, deterministic; false: through gptqmodel's torch kernel (it dequantizes every forward).",
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Less training memory, slower steps; auto: only for rows longer than 160 tokens (RAG "
        "answers), where it saves memory (on short rows it saves none and costs 38 % of the time).",
    )
    min_pairs: int = Field(8, ge=1, description="Fewer new accepted pairs than this: nothing is trained.")
    min_interval_hours: float = Field(24.0, ge=0)
    eval_fraction: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Share of 👍 answers held out of a run to check the answer style; corrections are "
        "always trained on, and pairs held out in one run are trained on in the next.",
    )
    anchors: int = Field(
        16,
        ge=0,
        le=46,  # the general questions in adapters/model/_calibration.py
        description="General questions the base model answers for itself, replayed in every run "
        "so the adapter keeps the base's general answers; 0: none.",
    )
    anchors_per_pair: float = Field(
        0.6,
        ge=0.0,
        description="Larger runs replay more anchors: at least this many per trained pair (up to 46), "
        "so that many pairs do not drown the anchors and erode general answers round after round.",
    )
    continue_from_active: bool = Field(
        True,
        description="A run continues the active adapter's LoRA weights instead of starting a fresh one "
        "(a fresh one when the active holds forgotten pairs): two rounds of 20 corrections kept 19 of "
        "the first round's 20 this way, 17 fresh (bench/learning_proof.py).",
    )
    rephrase_corrections: bool = Field(
        True,
        description="Also train on the base model's own rewording of each correction's question, so a "
        "fact taught one way is answered when asked in other words.",
    )
    preference: Literal["off", "dpo"] = Field(
        "off",
        description="After the SFT steps, train each correction over the answer it replaced (DPO). Off: "
        "with 20 corrections a rejected answer came back in 0 of 40 asks with or without it, and DPO cost "
        "159 s (README, Preference training).",
    )
    preference_epochs: float = Field(2.0, gt=0, description="Passes over the preference rows (dpo).")
    gate_min_learned: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of this run's new pairs the candidate must answer."
    )
    gate_max_forgotten: float = Field(
        0.1, ge=0.0, le=1.0, description="Allowed drop in the share of earlier pairs answered."
    )
    gate_max_regression_drop: float = Field(
        0.05,
        ge=0.0,
        description="Allowed accuracy drop on the regression set: 3 of its 70 gradable questions (an "
        "answer or two flip between runs of the same model), against the active and the base.",
    )
    gate_max_heldout_drop: float = Field(0.05, ge=0.0, description="Allowed drop of held-out token F1.")


class PrivacySettings(BaseSettings):
    """What the bot keeps about members, and for how long (prefix ``LOOPBOT_PRIVACY_``)."""

    model_config = _config("LOOPBOT_PRIVACY_")

    retention_days: int = Field(
        30,
        ge=0,
        description="Answers nobody voted on or corrected are deleted after this many days (0: kept). "
        "Feedback comes within days of an answer; after that an unvoted answer teaches nothing.",
    )


class Settings(BaseSettings):
    """All of loopbot's settings (prefix ``LOOPBOT_``), sections included."""

    model_config = _config("LOOPBOT_")

    data_dir: Path = Field(Path.home() / ".local" / "share" / "loopbot")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    model: ModelSettings = Field(default_factory=ModelSettings)
    kb: KnowledgeSettings = Field(default_factory=KnowledgeSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    # Every piece of state lives under data_dir; this is the one place that knows the layout.
    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "loopbot.db"


class Secrets(BaseSettings):
    """Secrets: no defaults, never logged (``SecretStr`` prints as ``**********``)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    discord_token: SecretStr = Field(validation_alias="DISCORD_TOKEN", min_length=20)


_SECTIONS: dict[str, type[BaseSettings]] = {
    "model": ModelSettings,
    "kb": KnowledgeSettings,
    "discord": DiscordSettings,
    "train": TrainSettings,
    "privacy": PrivacySettings,
}


_S = TypeVar("_S", bound=BaseSettings)


def _env_name(cls: type[BaseSettings], loc: tuple[int | str, ...]) -> str:
    """The environment variable behind a validation error location."""
    if cls is Secrets:
        return "DISCORD_TOKEN"
    if loc and loc[0] in _SECTIONS:
        return _env_name(_SECTIONS[str(loc[0])], loc[1:])
    prefix = str(cls.model_config.get("env_prefix", ""))
    return (prefix + str(loc[0] if loc else "")).upper()


def _explain(cls: type[BaseSettings], error: ValidationError) -> SettingsError:
    lines = []
    for item in error.errors():
        name = _env_name(cls, tuple(item["loc"]))
        problem = "is not set" if item["type"] == "missing" else f"is invalid: {item['msg']}"
        lines.append(f"{name} {problem}. Set it in the environment or in .env (see .env.example).")
    return SettingsError("\n".join(lines))


def _build(cls: type[_S]) -> _S:
    try:
        return cls()
    except ValidationError as error:
        raise _explain(cls, error) from None


def load_settings() -> Settings:
    """Read settings from the environment and ``.env``; raise :class:`SettingsError` naming the variable."""
    model, kb = _build(ModelSettings), _build(KnowledgeSettings)
    discord, train = _build(DiscordSettings), _build(TrainSettings)
    privacy = _build(PrivacySettings)
    try:
        return Settings(model=model, kb=kb, discord=discord, train=train, privacy=privacy)
    except ValidationError as error:
        raise _explain(Settings, error) from None


def load_secrets() -> Secrets:
    """Read ``DISCORD_TOKEN``; raise :class:`SettingsError` telling the operator how to set it."""
    return _build(Secrets)
