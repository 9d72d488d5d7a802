"""Vocabulary-constrained correction of a transcript: a misheard object name after an attribute snaps to a known name.

A robot user names objects with an attribute in front ("the purple ball", "the red apple"); a small recogniser hears a
sound-alike there ("the purple mall"). `snap_names` replaces a word that sits in such a name slot -- directly after a
colour or size word -- and is not itself a known word by the closest name of the vocabulary, when the two are close
enough in sound and spelling. "Close" is a weighted edit distance over a small phonetic spelling (`phonetic_key`:
silent letters dropped, sound-alike spellings merged) in which a swap between similar sounds (b/p/m, d/t, g/k, s/z,
f/v, m/n, l/r, vowels among themselves) costs half an edit, divided by the length of the longer key; at most
`max_distance` (default 0.2: less than one sound in four) snaps, and only when no second name is about as close (a word
halfway between "book" and "mug" stays as heard). Nothing else in the transcript changes.

Which words are "known": the vocabulary itself (the model's object names plus the user's list), the attribute words,
and an optional lexicon (e.g. the word list of a word-level model's tokenizer: a word the model has is left alone).
"""
from __future__ import annotations

import re
from typing import Collection, Iterable, List, Optional, Sequence, Tuple

# Attribute words that put the next word in an object-name slot: colours and sizes, general English (not a data set's).
ATTRIBUTES: Tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "brown", "black", "white", "grey", "gray",
    "silver", "gold", "golden", "teal", "beige", "cyan", "magenta", "turquoise", "navy", "maroon",
    "big", "small", "large", "little", "tiny", "tall",
)
MAX_DISTANCE = 0.2  # normalised phonetic distance up to which a slot word snaps to a name (under one sound in four)
AMBIGUITY = 0.05  # a second name this close to the best makes the word ambiguous: it is left alone

_SIMILAR = [set("bpm"), set("dt"), set("gkq"), set("sz"), set("fv"), set("aeiou"), set("mn"), set("lr")]
_WORD = re.compile(r"[A-Za-z']+")


def phonetic_key(word: str) -> str:
    """A small metaphone-like spelling of how a word sounds: lower case, silent letters dropped, sound-alike spellings
    merged (ph->f, ck->k, soft c->s, hard c/q->k, x->ks, kn/wr/gn at the start -> n/r/n, dg->j, th->0, sh->x),
    a vowel group reduced to its first vowel, doubled letters merged."""
    w = re.sub(r"[^a-z]", "", word.lower())
    if not w:
        return ""
    for start, repl in (("kn", "n"), ("gn", "n"), ("wr", "r"), ("wh", "w"), ("ps", "s")):
        if w.startswith(start):
            w = repl + w[len(start):]
    for pattern, repl in (("tch", "ch"), ("dge", "j"), ("dg", "j"), ("ph", "f"), ("ck", "k"), ("gh", ""), ("sh", "x"),
                          ("ch", "x"), ("th", "0"), ("c(?=[eiy])", "s"), ("c", "k"), ("q", "k"), ("x", "ks"), ("z", "s")):
        w = re.sub(pattern, repl, w)
    if len(w) > 2 and w.endswith("e") and w[-2] not in "aeiou":  # silent final e ("plate", "knife")
        w = w[:-1]
    w = re.sub(r"([aeiouy])[aeiouy]+", r"\1", w) if len(w) > 1 else w  # a vowel group sounds as its first vowel
    return re.sub(r"(.)\1+", r"\1", w)


def _cost(a: str, b: str) -> float:
    if a == b:
        return 0.0
    return 0.5 if any(a in group and b in group for group in _SIMILAR) else 1.0


def phonetic_distance(a: str, b: str) -> float:
    """Weighted edit distance between the phonetic keys of two words, divided by the longer key's length (0 = same
    sound, 1 = nothing in common)."""
    x, y = phonetic_key(a), phonetic_key(b)
    if not x or not y:
        return 1.0
    row = [float(j) for j in range(len(y) + 1)]
    for i in range(1, len(x) + 1):
        diagonal, row[0] = row[0], float(i)
        for j in range(1, len(y) + 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + _cost(x[i - 1], y[j - 1]))
    return row[len(y)] / max(len(x), len(y))


def closest_name(word: str, names: Iterable[str], max_distance: float = MAX_DISTANCE) -> Optional[str]:
    """The name that sounds most like `word` (a plural word is compared in the singular and answered in the plural),
    or None when none is within `max_distance` or a second name is within AMBIGUITY of the best."""
    lowered = word.lower()
    plural = lowered.endswith("s") and not lowered.endswith("ss") and len(lowered) > 3
    scored = {}
    for name in dict.fromkeys(names):
        for said, suffix in ((lowered, ""), (lowered[:-1], "s")) if plural else ((lowered, ""),):
            distance = phonetic_distance(said, name)
            if distance < scored.get(name, (2.0, ""))[0]:
                scored[name] = (distance, name + suffix)
    ranked = sorted(scored.values())
    if not ranked or ranked[0][0] > max_distance:
        return None
    if len(ranked) > 1 and ranked[1][0] - ranked[0][0] < AMBIGUITY:
        return None
    return ranked[0][1]


def snap_names(text: str, names: Sequence[str], *, attributes: Collection[str] = ATTRIBUTES,
               lexicon: Collection[str] = (), max_distance: float = MAX_DISTANCE) -> str:
    """The transcript with every unknown word in an object-name slot replaced by the closest name, when close enough.

    A name slot is the word right after an attribute word (`attributes`, default colours and sizes). A slot word is
    left alone when it is known: one of `names`, an attribute, or in `lexicon`. Only single-word names are targets.
    Case and the punctuation around the word are kept ("Purple mall?" -> "Purple ball?").
    """
    targets = [n.lower() for n in dict.fromkeys(names) if n and " " not in n.strip()]
    if not targets:
        return text
    attribute_set = {a.lower() for a in attributes}
    known = set(targets) | {t + "s" for t in targets} | attribute_set | {w.lower() for w in lexicon}
    matches = list(_WORD.finditer(text))
    pieces: List[str] = []
    last = 0
    for previous, match in zip([None] + matches[:-1], matches):
        word = match.group(0)
        if previous is None or previous.group(0).lower() not in attribute_set or word.lower() in known:
            continue
        if text[previous.end() : match.start()].strip():  # punctuation between: not one phrase
            continue
        name = closest_name(word, targets, max_distance)
        if name is None:
            continue
        if word[:1].isupper():
            name = name[:1].upper() + name[1:]
        pieces += [text[last : match.start()], name]
        last = match.end()
    return "".join(pieces) + text[last:] if pieces else text
