"""The speech path without a model: the name correction (aura_ros.vocabulary), the repetition test, the noise filter."""
import pytest

from aura_core.data.synthetic import CATEGORIES
from aura_ros import speech, vocabulary

NAMES = [c.name for c in CATEGORIES] + ["mug", "spoon", "box", "bread"]


@pytest.mark.parametrize("heard, meant", [
    ("What is covering part of the purple mall?", "What is covering part of the purple ball?"),
    ("Where is the red cap?", "Where is the red cup?"),
    ("Hand me the Green bull, please.", "Hand me the Green ball, please."),
    ("Which things do the orange boll cover?", "Which things do the orange ball cover?"),
    ("Where are the white pencels?", "Where are the white pencils?"),  # a plural stays plural
])
def test_a_misheard_name_after_an_attribute_snaps_to_the_closest_name(heard, meant):
    assert vocabulary.snap_names(heard, NAMES) == meant


@pytest.mark.parametrize("heard", [
    "What can I use to play a game?",  # no attribute before "game"
    "Which things here could help me cut some paper?",
    "What is behind the mall?",  # an unknown word, but not in a name slot
    "Where is the purple elephant?",  # in a name slot, but like no name
    "Is the red bag on the table?",  # as close to "ball" as to "book": ambiguous, left as heard
    "Where is the blue book?",  # already a name
    "Is the purple, mall open?",  # punctuation between: not one phrase
])
def test_words_outside_a_name_slot_or_unlike_every_name_are_left_alone(heard):
    assert vocabulary.snap_names(heard, NAMES) == heard


def test_known_words_and_the_switches():
    heard = "Where is the red cap?"
    assert vocabulary.snap_names(heard, NAMES, lexicon=["cap"]) == heard  # a word the model knows is not a misheard name
    assert vocabulary.snap_names(heard, NAMES, attributes=()) == heard  # no attribute words: no name slots
    assert vocabulary.snap_names(heard, NAMES, max_distance=0.0) == heard
    assert vocabulary.snap_names(heard, []) == heard
    assert vocabulary.snap_names("the red mall", ["ball", "cutting board"]) == "the red ball"  # phrases are no targets


def test_phonetic_key_and_distance():
    key = vocabulary.phonetic_key
    assert key("knife") == key("nife") and key("phone") == key("fone") and key("clock") == key("klok")
    assert vocabulary.phonetic_distance("ball", "ball") == 0.0
    assert vocabulary.phonetic_distance("mall", "ball") < vocabulary.phonetic_distance("model", "ball") <= 1.0
    assert vocabulary.closest_name("mall", NAMES) == "ball" and vocabulary.closest_name("table", NAMES) is None


def test_repetition_test():
    assert speech.is_repetitive("Where is the ball? Where is the ball?")
    assert speech.is_repetitive("the the the the the the the the the the the the the the the the the the the the")
    assert not speech.is_repetitive("Is the apple next to the banana, next to the apple?")
    assert not speech.is_repetitive("What is covering part of the purple ball?")


def test_noise_reducer_lowers_steady_noise_and_leaves_clean_audio_alone():
    import numpy as np

    rng = np.random.default_rng(0)
    tone = (0.3 * np.sin(np.arange(16000) * 0.2)).astype(np.float32)
    reducer = speech.NoiseReducer()
    assert reducer(tone) is tone  # nothing learnt yet
    for _ in range(10):
        reducer.learn(np.zeros(speech.VAD_WINDOW, np.float32))
    assert reducer(tone) is tone  # digital silence: no noise to take away
    for _ in range(30):
        reducer.learn((0.1 * rng.standard_normal(speech.VAD_WINDOW)).astype(np.float32))
    noise = (0.1 * rng.standard_normal(tone.size)).astype(np.float32)
    cleaned = reducer(tone + noise)
    assert cleaned.shape == tone.shape and cleaned.dtype == np.float32
    assert np.mean((cleaned - tone) ** 2) < 0.3 * np.mean(noise**2)
    reducer.reset()
    assert reducer.noise is None
