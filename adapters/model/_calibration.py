"""Calibration text for GPTQ-quantizing the default model, built offline and deterministically.

GPTQ fits each layer's 4-bit weights to the activations the calibration text produces, so the text
should look like what the bot will feed the model: chat-templated questions, long RAG prompts with
numbered passages, and the model's *own* answers to them (so the assistant turn is in-distribution).
Sources, all on this machine: a fixed list of instructions below (disjoint from the regression
questions), general-topic requests, templated community facts, and prose from the Python standard
library's docstrings.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import inspect
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from adapters.prompt import DEFAULT_SYSTEM_PROMPT as SYSTEM_PROMPT
from adapters.prompt import format_context, training_messages

# Shipped in the adapters.data package (beside the regression questions and the demo's data).
CALIBRATION_FILE = Path(__file__).resolve().parent.parent / "data" / "calibration.json.gz"

INSTRUCTIONS = [
    "How do I keep my cat from scratching the sofa?",
    "Explain what a vector database is in two sentences.",
    "Write a short welcome message for new members of a gardening club.",
    "What is the boiling point of water at sea level?",
    "Give me three tips for taking better photos with a phone.",
    "Summarize the plot of Romeo and Juliet in one paragraph.",
    "What does HTTP stand for?",
    "How often should I feed an adult cat?",
    "Translate 'good morning' into French and Spanish.",
    "What is the difference between weather and climate?",
    "Suggest a name for a Discord server about board games.",
    "Why is the sky blue?",
    "How do I make a cup of green tea?",
    "What is photosynthesis?",
    "List the days of the week.",
    "Explain recursion to a beginner programmer.",
    "What should I pack for a weekend camping trip?",
    "Who was Albert Einstein?",
    "What is the tallest mountain on Earth?",
    "How can I improve my sleep?",
    "Write a haiku about autumn leaves.",
    "What are the primary colors?",
    "How do vaccines work?",
    "What is the speed of light?",
    "Give an example of a healthy breakfast.",
    "What is a prime number? Give two examples.",
    "How do I politely decline a meeting invitation?",
    "What causes earthquakes?",
    "Describe a cat in three words.",
    "What is the main ingredient of guacamole?",
    "How many continents are there?",
    "What is machine learning?",
    "Write a one-sentence reminder about the club meeting on Friday at 7 pm.",
    "What is the largest ocean on Earth?",
    "How do I change a flat bicycle tire?",
    "What is 12 multiplied by 7?",
    "What language is spoken in Brazil?",
    "Explain what a LoRA adapter is in simple words.",
    "What are the symptoms of dehydration in dogs?",
    "Who wrote the play Hamlet?",
    "猫に最適な食事は何ですか？",
    "富士山の高さはどれくらいですか？",
    "日本で一番長い川は何ですか？",
    "おすすめの本を一冊教えてください。",
    "東京から大阪まで新幹線で何時間かかりますか？",
    "プログラミングを始めるにはどうすればいいですか？",
]

# General-knowledge requests on everyday topics (none a regression-set topic): the model's own longer
# answers to them add most of the calibration tokens, which lowered the 4-bit model's KL divergence
# from the fp32 one by 17 % (bench/quantization_recipes.py).
TOPICS = [
    "rivers", "volcanoes", "the moon", "bread baking", "chess", "honey bees", "trains", "the ocean tides",
    "rainbows", "dinosaurs", "coffee", "bicycles", "the Roman Empire", "penguins", "electricity", "pianos",
    "deserts", "the human heart", "football", "clouds", "libraries", "robots", "the Great Wall of China",
    "tigers", "recycling", "airplanes", "snow", "the Internet", "pyramids of Egypt", "elephants",
    "gardening", "glass", "the periodic table", "jazz music", "forests", "birthdays", "umbrellas",
    "mountains", "bridges", "whales", "solar energy", "cheese", "the alphabet", "sleep", "maps", "owls",
    "castles", "paper", "spiders", "olympic games", "rice", "lightning", "kites", "the brain",
    "submarines", "mushrooms", "clocks", "wolves", "the desert cactus", "printing press", "shoes",
    "butterflies", "telescopes", "islands",
]  # fmt: skip
_TOPIC_REQUESTS = ["Tell me about {}.", "Write a short paragraph about {}.", "Give me three facts about {}.",
                   "Why are {} important?"]  # fmt: skip


def topic_requests(count: int) -> list[str]:
    """``count`` distinct requests: every topic in the first phrasing, then in the next, and so on."""
    if count > len(TOPICS) * len(_TOPIC_REQUESTS):
        raise ValueError(f"at most {len(TOPICS) * len(_TOPIC_REQUESTS)} topic requests")
    return [_TOPIC_REQUESTS[i // len(TOPICS)].format(TOPICS[i % len(TOPICS)]) for i in range(count)]


_NAMES = ["Mochi", "Luna", "Tofu", "Biscuit", "Pixel", "Nori", "Pepper", "Sushi", "Ziggy", "Maple"]
_OWNERS = ["Aiko", "Ben", "Chloe", "Daniel", "Emi", "Farid", "Grace", "Hiro", "Ines", "Jonas"]
_EVENTS = [
    ("sneezed twice a day", "the vet said it was a mild cold"),
    ("stopped eating dry food", "switching to wet food helped within a week"),
    ("started limping on the left paw", "an X-ray showed a small sprain"),
    ("scratched the new sofa", "a sisal scratching post fixed it"),
    ("was scared of the vacuum cleaner", "treats near the vacuum made it calmer"),
    ("got a rabies vaccination", "the next one is due in three years"),
]
_MONTHS = ["January", "March", "May", "July", "September", "November"]
_MODULES = [
    "json",
    "argparse",
    "asyncio",
    "collections",
    "email",
    "csv",
    "logging",
    "sqlite3",
    "pathlib",
    "textwrap",
    "unittest",
    "zipfile",
    "http.client",
    "urllib.request",
    "decimal",
]


def stdlib_paragraphs(min_words: int = 30) -> list[str]:
    """English prose paragraphs from standard-library docstrings (present on every Python)."""
    paragraphs: list[str] = []
    for name in _MODULES:
        module = importlib.import_module(name)
        objects = [module] + [
            obj for _, obj in inspect.getmembers(module) if inspect.isclass(obj) or inspect.isfunction(obj)
        ]
        for obj in objects:
            doc = inspect.getdoc(obj) or ""
            for block in doc.split("\n\n"):
                text = " ".join(block.split())
                if len(text.split()) >= min_words and not text.startswith((">>>", "-", "*")):
                    paragraphs.append(text)
    return sorted(set(paragraphs))


def _fact(rng: random.Random) -> tuple[str, str, str]:
    """A community post, the question it answers and a keyword of the answer."""
    pet, owner = rng.choice(_NAMES), rng.choice(_OWNERS)
    event, outcome = rng.choice(_EVENTS)
    month, year = rng.choice(_MONTHS), rng.choice([2023, 2024, 2025])
    post = f"{owner}: {pet} {event} in {month} {year}; {outcome}."
    question = f"What happened to {pet} in {month} {year}?"
    return post, question, outcome


def rag_prompts(count: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Chat messages shaped like the bot's retrieval prompts: numbered passages, then a question."""
    rng = random.Random(seed)
    prose = stdlib_paragraphs()
    prompts = []
    for _ in range(count):
        post, question, _ = _fact(rng)
        passages = rng.sample(prose, rng.randint(2, 4)) + [post]
        rng.shuffle(passages)
        # Laid out exactly as the answer chain lays out its passages (in-distribution activations).
        context = format_context(passages)
        prompts.append(training_messages(question, context, SYSTEM_PROMPT))
    return prompts


def _answer_all(
    model,
    tokenizer,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int,
    advance: Callable[[int], None] | None = None,
) -> list[str]:
    """The model's own greedy answers, in batches (left padding), rendered as full chat texts."""
    import torch

    tokenizer.padding_side = "left"
    texts = []
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        prompts = [
            tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in batch
        ]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        for prompt, ids in zip(prompts, out[:, encoded["input_ids"].shape[1] :], strict=True):
            answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
            texts.append(prompt + answer + "<|im_end|>\n")
        if advance is not None:
            advance(len(batch))
    return texts


@dataclass(frozen=True)
class Recipe:
    """What the calibration is made of. The defaults are the shipped calibration's recipe, chosen with
    bench/quantization_recipes.py: without the 192 topic answers (44 texts, ~9k tokens instead of
    ~36k) quantization takes 86 s instead of 206 s for the same divergence from fp32 (agreement 0.910
    vs 0.917, KL 0.086 vs 0.082; repeated runs of one recipe differ by ~0.015 in agreement)."""

    n_chat: int = 24
    n_rag: int = 8
    n_prose: int = 12
    n_topics: int = 0
    seed: int = 0

    def answered(self) -> list[tuple[list[list[dict[str, str]]], int, int]]:
        """The conversations the fp32 model answers: (conversations, max new tokens, batch size)."""
        # Every other instruction, so English and Japanese are both kept when n_chat is small.
        picked = (INSTRUCTIONS[::2] + INSTRUCTIONS[1::2])[: self.n_chat]
        chats = [training_messages(q, "", SYSTEM_PROMPT) for q in picked]
        topics = [training_messages(r, "", SYSTEM_PROMPT) for r in topic_requests(self.n_topics)]
        # One batch each: on a 2-core CPU a batch of 24 costs little more than a single sequence.
        return [(chats, 48, 24), (rag_prompts(self.n_rag, self.seed), 32, 8), (topics, 96, 16)]

    def key(self, gguf: Path) -> str:
        """Identifies the texts this recipe yields from this model file: what is answered, how, by which
        weights. A shipped file with another key is stale (other model, prompt or recipe)."""
        digest = hashlib.sha256()
        with open(gguf, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        recipe = json.dumps([asdict(self), self.answered()], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256((digest.hexdigest() + recipe).encode()).hexdigest()[:16]


def build_calibration(plain_dir: Path, recipe: Recipe | None = None, *, progress: bool = False) -> list[str]:
    """Calibration texts: chat Q&A and RAG prompts answered by the fp32 model, plain prose, and the
    model's longer answers to general-topic requests (about 25 s on 2 cores with the default recipe)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = recipe or Recipe()
    torch.manual_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(plain_dir))
    model = AutoModelForCausalLM.from_pretrained(str(plain_dir), dtype=torch.float32).eval()
    answered = recipe.answered()
    texts: list[str] = []
    total = sum(len(conversations) for conversations, _, _ in answered)
    with tqdm(total=total, desc="calibration answers", unit="answer", disable=not progress) as bar:
        for conversations, max_new_tokens, batch_size in answered:
            texts += _answer_all(model, tokenizer, conversations, max_new_tokens, batch_size, bar.update)
    rng = random.Random(recipe.seed)
    prose = stdlib_paragraphs()
    # Chunks of 3-4 consecutive paragraphs: plain text of a few hundred tokens.
    for _ in range(recipe.n_prose):
        i = rng.randrange(len(prose))
        texts.append(" ".join(prose[i : i + rng.randint(3, 4)]))
    del model
    return texts


def shipped_calibration(gguf: Path, recipe: Recipe | None = None) -> list[str] | None:
    """The calibration shipped with loopbot, or None if it was made from another model, prompt or recipe.

    The fp32 model's greedy answers are deterministic, so they are generated once
    (``python -m adapters.model``) and shipped instead of being regenerated on every machine.
    """
    if not CALIBRATION_FILE.is_file():
        return None
    data = json.loads(gzip.decompress(CALIBRATION_FILE.read_bytes()).decode("utf-8"))
    if data.get("key") != (recipe or Recipe()).key(gguf):
        return None
    return list(data["texts"])


def write_shipped(plain_dir: Path, gguf: Path, recipe: Recipe | None = None) -> Path:
    """Generate the calibration from ``plain_dir`` (converted from ``gguf``) and write the shipped file."""
    recipe = recipe or Recipe()
    texts = build_calibration(plain_dir, recipe, progress=True)
    payload = json.dumps(
        {"key": recipe.key(gguf), "recipe": asdict(recipe), "texts": texts}, ensure_ascii=False
    )
    CALIBRATION_FILE.write_bytes(gzip.compress(payload.encode("utf-8"), mtime=0))
    return CALIBRATION_FILE
