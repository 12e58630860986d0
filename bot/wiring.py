"""Build loopbot's services from settings. The only place that turns settings into objects.

Every builder is lazy (nothing heavy is imported or loaded until it is called) and takes the
settings object, so the CLI, the bot, the benchmarks and the tests share one way to assemble parts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.registry import AdapterRegistry, AdapterVersion
    from adapters.serving import QuestionRouting, RemoteRuntime, Runtime
    from bot.settings import Settings
    from bot.usecases.training import TrainingParts
    from feedback.log import FeedbackLog
    from knowledge.chain import AnswerService
    from knowledge.store import KnowledgeBase


def build_feedback_log(settings: Settings) -> FeedbackLog:
    """The feedback log (answers, votes, corrections, pairs) at ``settings.db_path``, migrated."""
    from feedback.log import FeedbackLog

    return FeedbackLog(settings.db_path)


def resolve_model_base(settings: Settings) -> str:
    """``settings.model.base``, or the prepared offline default; AdapterError if it is not prepared."""
    from adapters.errors import AdapterError
    from adapters.model import default_model_dir, is_prepared

    if settings.model.base:
        return settings.model.base
    path = default_model_dir(settings.models_dir)
    if not is_prepared(path):
        raise AdapterError(
            f"The default model is not prepared in {settings.models_dir}: run `loopbot model prepare` "
            "(about 2 minutes, offline) or set LOOPBOT_MODEL_BASE to a GPTQ model directory."
        )
    return str(path)


def build_runtime(settings: Settings, *, guild_id: str | None = None) -> Runtime:
    """The model runtime: the configured base (or the prepared default), generation defaults from settings.

    With ``guild_id`` it answers with that guild's active adapter by default (the CLI, the demo);
    without, with the base model (the bot serves each guild its own through ``GuildAdapters``)."""
    from adapters.serving import ModelRuntime
    from bot.usecases.serving import serve_active

    runtime: Runtime
    if settings.model.server_url:
        runtime = build_remote_runtime(settings)
    else:
        runtime = ModelRuntime.load(
            resolve_model_base(settings),
            device=settings.model.device,
            backend=settings.model.backend,
            dtype=settings.model.dtype,
            threads=settings.model.threads,
            max_new_tokens=settings.model.max_new_tokens,
            temperature=settings.model.temperature,
            system_prompt=settings.model.system_prompt,
            repetition_penalty=settings.model.repetition_penalty,
            max_batch=settings.model.max_batch,
            max_waiting=settings.model.max_waiting,
            native_decode=settings.model.native_decode,
        )
    if guild_id is not None:
        try:
            serve_active(runtime, build_registry(settings, guild_id))
        except BaseException:
            runtime.close()
            raise
    return runtime


def build_remote_runtime(settings: Settings) -> RemoteRuntime:
    """A runtime generating on the OpenAI-compatible server at ``LOOPBOT_MODEL_SERVER_URL``."""
    from adapters.errors import AdapterError
    from adapters.serving import RemoteRuntime

    if not settings.model.base:
        raise AdapterError(
            "LOOPBOT_MODEL_SERVER_URL is set but LOOPBOT_MODEL_BASE is empty: set it to the model name the "
            "server serves (vLLM's --served-model-name or the hub id it was started with)."
        )
    return RemoteRuntime(
        settings.model.server_url,
        model=settings.model.base,
        api_key=settings.model.server_api_key.get_secret_value(),
        max_new_tokens=settings.model.max_new_tokens,
        temperature=settings.model.temperature,
        system_prompt=settings.model.system_prompt,
    )


def build_registry(settings: Settings, guild_id: str) -> AdapterRegistry:
    """One guild's adapter registry under ``settings.adapters_dir`` (versions, active pointer, history)."""
    from adapters.registry import guild_registry

    return guild_registry(settings.adapters_dir, guild_id)


def build_training_parts(
    settings: Settings,
    feedback_log: FeedbackLog,
    *,
    guild_id: str | None = None,
    member_id: str | None = None,
    runtime: Runtime | None = None,
    serve: Callable[[AdapterVersion | None], Any] | None = None,
    embeddings: Any | None = None,
) -> TrainingParts:
    """The parts of one guild's training cycle (or, with ``member_id``, of that member's own
    adapter, trained over ``guild_id``'s active adapter when one is given): the caller's log, the
    registry, the base model, the serving ``runtime`` with its ``serve`` swap (None: a temporary
    runtime is loaded for the gate, then closed), and the gate's routing (with ``embeddings``, the
    knowledge base's embedder, else one loaded when the gate needs it)."""
    from adapters.registry import member_registry
    from bot.usecases.training import TrainingParts

    if guild_id is None and member_id is None:
        raise TypeError("build_training_parts needs a guild_id, a member_id or both")
    beneath = None
    if member_id is not None:
        registry = member_registry(settings.adapters_dir, member_id)
        if guild_id is not None:
            guild_registry = build_registry(settings, str(guild_id))
            beneath = guild_registry.active
    else:
        registry = build_registry(settings, str(guild_id))
    return TrainingParts(
        feedback_log=feedback_log,
        registry=registry,
        base_model=lambda: resolve_model_base(settings),
        runtime=runtime,
        load_runtime=lambda: build_runtime(settings),
        guild_id=None if member_id is not None else guild_id,
        member_id=member_id,
        beneath=beneath,
        serve=serve,
        routing=build_routing(settings, embeddings),
    )


def build_embeddings(settings: Settings) -> Any:
    """The sentence-transformers embedder (``LOOPBOT_KB_EMBEDDING_MODEL``; empty: the packaged MiniLM)."""
    from knowledge.embeddings import load_embeddings

    return load_embeddings(settings.kb.embedding_model)


def build_routing(
    settings: Settings, embeddings: Any | None = None, embed_query: Callable[[str], Any] | None = None
) -> QuestionRouting | None:
    """Which questions each adapter answers (``LOOPBOT_MODEL_ADAPTER_MIN_SIMILARITY``; 0: all, None
    is returned). ``embeddings``: the knowledge base's embedder; without, it is loaded at first use.
    ``embed_query``: the knowledge base's cached query embedding, so a question is embedded once."""
    from functools import cache

    from adapters.serving import QuestionRouting
    from knowledge.quoting import fact_answers

    if settings.model.adapter_min_similarity <= 0:
        return None

    @cache
    def embedder() -> Any:
        return embeddings if embeddings is not None else build_embeddings(settings)

    return QuestionRouting(
        lambda texts: embedder().embed_documents(texts),
        embed_query or (lambda text: embedder().embed_query(text)),
        min_similarity=settings.model.adapter_min_similarity,
        # A taught fact answers a question about what it speaks of, by the rule a note's quote does.
        about=fact_answers,
    )


def build_knowledge_base(
    settings: Settings, embeddings: Any | None = None, *, claim: bool = False
) -> KnowledgeBase:
    """The knowledge base: a Chroma server if ``LOOPBOT_KB_CHROMA_HOST`` is set, else the embedded
    store in ``settings.chroma_dir`` guarded by a one-writer lock. The lexical index sits beside it.

    ``claim=True`` takes the writer lock before the embedder loads, so a second writer fails at once."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from knowledge.errors import KnowledgeError
    from knowledge.lock import StoreLock
    from knowledge.store import KnowledgeBase

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    lock = None if settings.kb.chroma_host else StoreLock(settings.chroma_dir)
    if claim and lock is not None:
        lock.acquire()
    embeddings = embeddings if embeddings is not None else build_embeddings(settings)
    if settings.kb.chroma_host:
        try:
            client = chromadb.HttpClient(
                host=settings.kb.chroma_host, port=settings.kb.chroma_port, settings=chroma_settings
            )
        except Exception as error:  # chromadb raises plain exceptions for connection problems
            raise KnowledgeError(
                f"cannot reach the Chroma server {settings.kb.chroma_host}:{settings.kb.chroma_port} ({error}): "
                "start it, or unset LOOPBOT_KB_CHROMA_HOST to use the embedded store"
            ) from None
        lexical = settings.data_dir / f"lexical-{settings.kb.chroma_host}-{settings.kb.chroma_port}.db"
        return KnowledgeBase(
            client, embeddings, lexical_path=lexical, latin_lexical_weight=settings.kb.word_match_weight
        )
    settings.chroma_dir.mkdir(parents=True, exist_ok=True)
    client = chromadb.PersistentClient(path=str(settings.chroma_dir), settings=chroma_settings)
    return KnowledgeBase(
        client,
        embeddings,
        lexical_path=settings.chroma_dir / "lexical.db",
        latin_lexical_weight=settings.kb.word_match_weight,
        lock=lock,
        persist_dir=settings.chroma_dir,
    )


def build_answer_service(
    settings: Settings, *, kb: KnowledgeBase | None = None, runtime: Runtime | None = None
) -> AnswerService:
    """The answer chain over ``kb`` (built if not given) and ``runtime`` (built if not given)."""
    from adapters.serving import routed
    from knowledge.chain import AnswerService

    kb = kb if kb is not None else build_knowledge_base(settings)
    runtime = runtime if runtime is not None else build_runtime(settings)
    routing = build_routing(settings, getattr(kb, "embeddings", None), getattr(kb, "embed_query", None))
    return AnswerService(
        kb,
        runtime,
        # Without routing the active adapter answers everything, and nothing is labelled as taught.
        route=routed(runtime, routing) if routing is not None else None,
        top_k=settings.kb.top_k,
        system_prompt=settings.model.system_prompt,
        max_context_tokens=settings.kb.max_context_tokens,
        min_relevance=settings.kb.min_relevance,
        relevance_margin=settings.kb.relevance_margin,
        max_passages=settings.kb.max_passages or None,
        max_sentences=settings.model.max_sentences,
        quote_evidence=settings.kb.quote_evidence,
    )
