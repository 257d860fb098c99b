"""Evaluation text: bundled public-domain excerpts of two genres, and text the dense model writes itself.

Perplexity and KL are only comparable when every variant is scored on the same ordinary English
that neither we nor the model wrote. Two genres are bundled, so that a plan tuned to one kind of
text shows what it costs on another (``prunenet/data/SOURCE.md`` records the exact recipes and
checksums):

* ``fiction``: Chapter I of *Botchan (Master Darling)* by Natsume Soseki, English translation by
  Yasotaro Morri (1919), public domain in the US; about 5.3k SmolLM2 tokens. From the PyPI source
  distribution ``sentencepiece==0.2.3`` (Project Gutenberg EBook #8868).
* ``technical``: the first sixteen sections of SQLite's C API reference, the documentation comments
  of ``sqlite3.h`` (SQLite is in the public domain), markup and code examples removed; about 5.3k
  tokens. From the PyPI source distribution ``sqlean.py==3.50.4.5``.

A published text may be partly memorized by a model trained on web text, which lowers its
perplexity a little; it does not bias the comparison of a pruned model with its own dense source,
which is what these texts are for.

:func:`self_generated_text` gives the complementary view: samples from the dense model itself
(fixed prompts and seed), on which the dense model is by construction at home.
"""

from __future__ import annotations

from importlib import resources

__all__ = [
    "BUNDLED",
    "SOURCE",
    "TEXTS",
    "GENRES",
    "DEFAULT_SLICE_CHARS",
    "PROMPTS",
    "reference_text",
    "genre_text",
    "document_start_id",
    "self_generated_text",
]

BUNDLED: dict[str, dict[str, str]] = {
    "fiction": {
        "title": "Botchan (Master Darling), Chapter I",
        "author": "Natsume Soseki (Kin-nosuke Natsume), tr. Yasotaro Morri, rev. J. R. Kennedy, 1919",
        "licence": "public domain (US); Project Gutenberg header, licence and trademark removed",
        "package": "sentencepiece==0.2.3 (PyPI source distribution, Apache-2.0)",
        "file": "sentencepiece-0.2.3/test/botchan.txt (Project Gutenberg EBook #8868)",
        "file_sha256": "464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7",
        "bundled": "prunenet/data/botchan-ch1.txt",
        "bundled_sha256": "d5016ddf5f581f113ca3f429056f9164c4a747155a8940df7456784878d49763",
    },
    "technical": {
        "title": "SQLite C API reference, first sixteen sections (sqlite3.h documentation comments)",
        "author": "the SQLite developers, SQLite 3.50.4",
        "licence": "public domain (the authors disclaim copyright); markup and code examples removed",
        "package": "sqlean.py==3.50.4.5 (PyPI source distribution)",
        "file": "sqlean_py-3.50.4.5/sqlite/sqlite3.h",
        "file_sha256": "abd1514e0351f79393d1be882830afdb40a8099e8257f311f0bfdf8486f11bea",
        "bundled": "prunenet/data/sqlite-capi.txt",
        "bundled_sha256": "02f5e0469c274f6252a4dbfaa06e50a7a3bf8addbbf5f2a4d996dba8eb181dd8",
    },
}
"""Where each bundled evaluation text comes from, exactly, by genre."""

SOURCE = BUNDLED["fiction"]
"""The main evaluation text (``default`` / ``full``)."""

DEFAULT_SLICE_CHARS = 8000
"""A quick slice: whole leading paragraphs up to this many characters (~1.5k tokens)."""

TEXTS: dict[str, tuple[str, bool]] = {
    "default": ("fiction", False),
    "full": ("fiction", True),
    "technical": ("technical", False),
    "technical-full": ("technical", True),
}
"""Names accepted by :func:`reference_text`: ``name -> (genre, whole text)``."""

GENRES: tuple[str, ...] = ("fiction", "technical")
"""The genres every quality report scores (:func:`genre_text`), in order; the first is the headline."""

PROMPTS = ("The", "In", "Once upon a time", "Here is", "I think", "A", "It was", "We")
"""Neutral short prompts the self-generated samples start from (cycled)."""


def _full_text(genre: str = "fiction") -> str:
    name = BUNDLED[genre]["bundled"].rsplit("/", 1)[-1]
    return resources.files("prunenet").joinpath("data", name).read_text(encoding="utf-8")


def _leading_paragraphs(text: str, max_chars: int) -> str:
    """Whole paragraphs from the start totalling at most ``max_chars`` (at least one paragraph)."""
    out: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        if out and size + len(para) > max_chars:
            break
        out.append(para)
        size += len(para) + 2
    return "\n\n".join(out).rstrip() + "\n"


def reference_text(name: str = "default") -> str:
    """A bundled text by name (:data:`TEXTS`): ``default`` (fiction, ~1.5k tokens, quick), ``full`` (~5.3k),
    ``technical`` (~1.9k) or ``technical-full`` (~5.3k)."""
    if name not in TEXTS:
        raise ValueError(f"unknown reference text {name!r}; choose one of {', '.join(TEXTS)}")
    genre, whole = TEXTS[name]
    text = _full_text(genre)
    return text if whole else _leading_paragraphs(text, DEFAULT_SLICE_CHARS)


def genre_text(genre: str, whole: bool = False) -> str:
    """A bundled genre's text (:data:`BUNDLED`): its quick slice, or all of it."""
    if genre not in BUNDLED:
        raise ValueError(f"unknown genre {genre!r}; choose one of {', '.join(BUNDLED)}")
    return reference_text(next(n for n, (g, w) in TEXTS.items() if g == genre and w == whole))


def document_start_id(tokenizer) -> int | None:
    """The token a document follows in pre-training: the BOS the tokenizer adds, else its end-of-text.

    Without it the first position is out of distribution for most base models (SmolLM2 continues
    a bare "The" with "-" 42% of the time; after ``<|endoftext|>`` it continues with a noun).
    """
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    if len(full) > len(plain) and full[-len(plain):] == plain:
        return full[0]
    eot = tokenizer.get_vocab().get("<|endoftext|>")
    if eot is not None:
        return eot
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def self_generated_text(model, tokenizer, n_samples: int = 8, n_tokens: int = 200, seed: int = 0,
                        temperature: float = 1.0, top_p: float = 0.95) -> list[str]:
    """``n_samples`` texts the model samples itself from :data:`PROMPTS` (prompt included).

    Each prompt starts a fresh document (:func:`document_start_id`). Sampling is seeded and
    batched with left padding, so the result is deterministic for a given model, seed and
    device; the caller's global RNG state is left untouched. Every sample has exactly
    ``n_tokens`` new tokens (end-of-text is suppressed until then).
    """
    import torch
    from transformers import LogitsProcessorList

    from prunenet.attention import grouped_attention
    from prunenet.nucleus import NucleusFilter

    if n_samples < 1 or n_tokens < 1:
        raise ValueError("n_samples and n_tokens must be positive")
    start = document_start_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = [([start] if start is not None else []) + tokenizer(PROMPTS[i % len(PROMPTS)],
                                                                  add_special_tokens=False)["input_ids"]
               for i in range(n_samples)]
    width = max(len(p) for p in prompts)
    device = model.device
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    fork = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork, device_type=device.type), torch.no_grad(), grouped_attention(model):
        torch.manual_seed(seed)
        out = model.generate(  # top-p by NucleusFilter (same tokens as transformers' warper, no full sort)
            input_ids=input_ids, attention_mask=attention_mask, do_sample=True, temperature=temperature,
            top_p=1.0, top_k=0, logits_processor=LogitsProcessorList([NucleusFilter(top_p)]),
            max_new_tokens=n_tokens, min_new_tokens=n_tokens, pad_token_id=pad_id,
        )
    return [tokenizer.decode(row[width - len(p):], skip_special_tokens=True) for p, row in zip(prompts, out, strict=True)]
