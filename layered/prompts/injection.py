"""Indirect prompt injection: defuse chat-template control tokens, and flag instruction-like text.

Two jobs, one module:

* **Defusing** (:func:`defuse_control_tokens`). A chat template opens and closes turns with
  special tokens (``<|im_start|>``, ``<|im_end|>``, ``</s>``, ``[INST]``...). A tokenizer
  parses those strings as control tokens wherever they appear, so a passage or a question
  containing ``<|im_end|>\\n<|im_start|>system`` would open a real system turn. Every message
  content is defused before the template is applied (``generation.common.chat_messages``, used
  by both backends and by training): invisible format characters (tag characters, zero-width
  spaces, bidi controls...) are stripped, then each of the tokenizer's special / added tokens, and the
  common control-token shapes of other model families, get their first ``<`` replaced by a
  look-alike (U+2039) or a word joiner (U+2060) after their first character, so they are
  tokenized as text. The template's own tokens are untouched.
* **Detecting** (:func:`looks_like_injection`). Delimiting is the defence; this is the alarm. A
  passage matching one of the patterns is reported in ``Answer.metadata["injection_suspects"]``
  (and at the end of a stream). Text hiding characters (Unicode tag characters, smuggled
  variation selectors) is flagged outright. Text is normalised first (NFKC, so fullwidth and
  compatibility forms fold; invisible format characters stripped; common Cyrillic/Greek homoglyphs
  mapped to Latin) so that look-alike spellings match too. Patterns follow OWASP LLM01 examples
  plus a few non-English forms; they are a tripwire, not a guarantee.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any, Iterable, Sequence

from layered.types import Hit

# -- defusing control tokens -------------------------------------------------------------------

# Control-token shapes of common chat templates, whatever the serving tokenizer is: every
# template the project supports (ChatML / Qwen / SmolLM, Llama 2 and 3, Mistral, Gemma, Phi,
# DeepSeek). Whitespace runs are bounded and never adjacent, so no pattern backtracks
# super-linearly (``tests/prompts/test_injection_hostile.py`` measures it as a ratio).
_MISTRAL = r"\[/?(?:INST|SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_CALLS|TOOL_RESULTS)\]"
_GENERIC_CONTROL = re.compile(
    r"<\|[^|<>\s]{1,40}\|>"                       # ChatML, Qwen, Llama 3, Phi: <|im_start|>, <|eot_id|>, <|user|>, <|end|>
    r"|</?s>|<<[ \t]{0,8}(?:/[ \t]{0,8})?SYS[ \t]{0,8}>>|" + _MISTRAL +  # Llama 2 / Mistral
    r"|<(?:start|end)_of_(?:turn|image)>|<(?:bos|eos|pad|unk)>"  # Gemma and friends
    r"|<\uff5c[^<>\s]{1,40}\uff5c>",               # fullwidth-bar variants (DeepSeek)
    re.IGNORECASE,
)

# Invisible format characters, stripped from every message before rendering (they carry no
# visible text; some carry hidden text): Unicode tag characters U+E0000-U+E007F (each one an
# invisible copy of an ASCII character, read by many tokenizers), variation selectors
# U+E0100-U+E01EF (used to smuggle bytes), zero-width spaces and joiners, bidi controls, the
# BOM, soft hyphen, invisible operators, interlinear annotation and shorthand/musical format
# controls. Kept: ZWNJ/ZWJ (U+200C/U+200D, which Persian, Indic scripts and emoji need; they
# spell nothing), the Arabic number signs, and U+FE00-U+FE0F (emoji presentation).
_FORMAT_RANGES = (
    (0x00AD, 0x00AD), (0x061C, 0x061C), (0x180E, 0x180E), (0x200B, 0x200B), (0x200E, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x2064), (0x2066, 0x206F), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE007F), (0xE0100, 0xE01EF),
)
_STRIP_FORMAT = {cp: None for lo, hi in _FORMAT_RANGES for cp in range(lo, hi + 1)}
# Tag characters outside an emoji subdivision flag (U+1F3F4, 2-6 tag letters/digits, CANCEL TAG)
# are hidden text: a passage holding them is flagged.
_FLAG_SEQUENCE = re.compile("\U0001F3F4[\U000E0030-\U000E0039\U000E0061-\U000E007A]{1,6}\U000E007F")
_TAGS = re.compile("[\U000E0000-\U000E007F]")
_SMUGGLED_BYTES = re.compile("[\U000E0100-\U000E01EF]{2}")


def strip_invisible(text: str) -> str:
    """``text`` without the invisible format characters listed above (tag characters included)."""
    return text.translate(_STRIP_FORMAT)


def hidden_text(text: str) -> str:
    """What tag characters in ``text`` spell (U+E0041 reads ``A``), emoji flags aside; ``""`` if none."""
    rest = _FLAG_SEQUENCE.sub("", text)
    return "".join(chr(ord(ch) - 0xE0000) for ch in _TAGS.findall(rest))


def _defused(token: str) -> str:
    if token.startswith("<"):
        return "\u2039" + token[1:]
    return token[0] + "\u2060" + token[1:]


@lru_cache(maxsize=32)
def _pattern(tokens: tuple[str, ...]) -> re.Pattern[str] | None:
    if not tokens:
        return None
    alternatives = sorted(set(tokens), key=len, reverse=True)  # longest first: <|im_start|> before <|
    return re.compile("|".join(re.escape(t) for t in alternatives))


def control_tokens(tokenizer: Any) -> tuple[str, ...]:
    """The strings ``tokenizer`` parses as special or added tokens (those a text must not contain)."""
    if tokenizer is None:
        return ()
    found: set[str] = set(getattr(tokenizer, "all_special_tokens", None) or ())
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for added in decoder.values():
        content = getattr(added, "content", None)
        # Added tokens made of letters only are ordinary words; anything with markup is control-like.
        if content and (getattr(added, "special", False) or not content.strip().isalnum()):
            found.add(content)
    return tuple(sorted(t for t in found if t.strip()))


def defuse_control_tokens(text: str, tokens: Iterable[str] = ()) -> str:
    """``text`` without invisible format characters (:func:`strip_invisible`), then with every
    control token (of ``tokens`` and the generic shapes of every supported template) made plain
    text. Stripping first means a token split by zero-width or tag characters is defused too."""
    text = strip_invisible(text)
    pattern = _pattern(tuple(tokens))
    if pattern is not None:
        text = pattern.sub(lambda m: _defused(m.group(0)), text)
    return _GENERIC_CONTROL.sub(lambda m: _defused(m.group(0)), text)


# -- detecting instruction-like text -----------------------------------------------------------

# Matching ignores every stripped format character and the joiners too (a split word still matches).
_INVISIBLE = {**_STRIP_FORMAT, 0x200C: None, 0x200D: None}
# Cyrillic and Greek letters that look like Latin ones (Unicode confusables, the common subset).
_HOMOGLYPHS = str.maketrans(
    "аеорсухіјѕԁɡһӏкмнтвАВЕКМНОРСТХІЈЅԜαβεικνορτυχΑΒΕΖΗΙΚΜΝΟΡΤΥΧ\u2039\u203a\uff1c\uff1e",
    "aeopcyxijsdghlkmhtbABEKMHOPCTXIJSWaBeikvoptuxABEZHIKMNOPTYX<><>",
)

_PATTERNS = [
    r"\b(ignore|disregard|forget|override|bypass)\b[^.\n]{0,40}\b(previous|prior|above|earlier|preceding|all|any|system)\b"
    r"[^.\n]{0,20}\b(instructions?|prompts?|rules?|messages?|directions?|directives?)",
    r"\byou are now\b",
    r"\bfrom now on,? you\b",
    r"\b(new|updated|revised) (system )?(instructions?|directions?|rules?)\s*:",
    r"\b(system|admin|developer)\s+(override|prompt|mode|message)\s*:",
    r"^[ \t]{0,40}(system|assistant)[ \t]{0,40}:",
    r"\b(reveal|print|show|repeat|output)\b[^.\n]{0,30}\b(system prompt|instructions|hidden prompt)\b",
    r"\bact as (an? )?(unrestricted|jailbroken|different|new)\b",
    r"\b(jailbreak|dan mode|developer mode)\b",
    r"<[ \t]{0,8}(?:/[ \t]{0,8})?(passage|references|system|assistant|user|im_start|im_end|instructions?)\b",
    r"<\|[^|<>\s]{1,40}\|>|<<[ \t]{0,8}(?:/[ \t]{0,8})?SYS[ \t]{0,8}>>|" + _MISTRAL,
    r"<(?:start|end)_of_turn>|</s>",  # Gemma turns; Llama 2 / Mistral end of turn
    # Non-English forms of "ignore the previous instructions".
    r"\bignor(a|e|ez|iere|ieren|are)\b[^.\n]{0,40}\b(instrucciones|instructions|anweisungen|istruzioni|instruções|instrucoes|regeln|reglas|règles)\b",
    r"\b(olvida|oublie|vergiss|dimentica|esqueça)\b[^.\n]{0,40}\b(instrucciones|instructions|anweisungen|istruzioni|instruções)\b",
    r"игнорир\w*[^.\n]{0,40}инструкц|забудь[^.\n]{0,40}инструкц",
    r"忽略[^。\n]{0,20}(指令|指示|说明|提示)|無視[^。\n]{0,20}(指示|命令)|이전\s*지시를?\s*무시",
]
_INJECTION = re.compile("|".join(f"(?:{p})" for p in _PATTERNS), re.IGNORECASE | re.MULTILINE)


def normalise(text: str) -> str:
    """NFKC, without invisible characters: the form patterns are matched against."""
    return unicodedata.normalize("NFKC", text).translate(_INVISIBLE)


def looks_like_injection(text: str) -> bool:
    """Whether ``text`` matches an injection pattern (after :func:`normalise`, and with homoglyphs
    folded), or hides text: tag characters outside an emoji flag, or a run of byte-smuggling
    variation selectors."""
    if hidden_text(text) or _SMUGGLED_BYTES.search(text):
        return True
    folded = normalise(text)
    return bool(_INJECTION.search(folded) or _INJECTION.search(folded.translate(_HOMOGLYPHS)))


def injection_suspects(context: Sequence[Hit]) -> list[dict[str, object]]:
    """``[{"number": n, "chunk_id": ...}]`` for each passage that looks like an injection."""
    return [
        {"number": n, "chunk_id": hit.chunk.id}
        for n, hit in enumerate(context, start=1)
        if looks_like_injection(hit.chunk.text)
    ]
