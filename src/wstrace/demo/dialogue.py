"""What the user says and what the simulated assistant answers, both drawn from the seed.

The device and the simulated ASR both call :func:`utterance`, so the simulation "recognises" what the device
was scripted to say. :func:`reply` answers any transcript (real ASR output included) by keyword, with
seeded choices in the details.
"""

from __future__ import annotations

import random
import re


__all__ = ["UTTERANCES", "reply", "tokens", "utterance"]

UTTERANCES = (
    "What's the weather like in Paris?",
    "Set a timer for ten minutes.",
    "Tell me a short joke.",
    "How far away is the moon?",
    "Play some relaxing jazz.",
    "What time is it in Tokyo?",
    "Remind me to call mom tonight.",
    "How do I say thank you in Spanish?",
)


def utterance(seed: int, turn: int) -> str:
    """The line the user says in ``turn`` (1-based): a seeded order of :data:`UTTERANCES`, cycled."""
    order = list(UTTERANCES)
    random.Random(f"{seed}:script").shuffle(order)
    return order[(turn - 1) % len(order)]


def _weather(rng: random.Random) -> str:
    sky = rng.choice(("sunny", "cloudy", "breezy", "drizzling"))
    return f"It's {rng.randint(9, 24)} degrees and {sky} in Paris right now. Take a light jacket tonight."


def _timer(rng: random.Random) -> str:
    return rng.choice(
        (
            "Done, your ten minute timer has started. I'll let you know when it's up.",
            "Timer set for ten minutes, starting now.",
        )
    )


def _joke(rng: random.Random) -> str:
    return rng.choice(
        (
            "Why did the packet cross the network? To get to the other side, eventually.",
            "I told my router a joke. It didn't get it, so I sent it again.",
        )
    )


def _moon(rng: random.Random) -> str:
    return "The moon is about three hundred eighty four thousand kilometres away. Light makes the trip in a second."


def _jazz(rng: random.Random) -> str:
    artist = rng.choice(("Bill Evans", "Miles Davis", "Chet Baker"))
    return f"Playing a relaxing jazz mix, starting with {artist}."


def _tokyo(rng: random.Random) -> str:
    return f"It's {rng.randint(1, 11)} {rng.choice(('AM', 'PM'))} in Tokyo. That's eight hours ahead of Paris."


def _remind(rng: random.Random) -> str:
    return f"Okay, I'll remind you to call mom at {rng.randint(6, 9)} PM tonight."


def _spanish(rng: random.Random) -> str:
    return "In Spanish you say gracias. For a warmer thanks, try muchas gracias."


_INTENTS = (
    (("weather", "rain", "paris"), _weather),
    (("timer", "minutes"), _timer),
    (("joke", "funny"), _joke),
    (("moon",), _moon),
    (("jazz", "music", "play"), _jazz),
    (("tokyo", "time"), _tokyo),
    (("remind", "call"), _remind),
    (("spanish", "thank", "say"), _spanish),
)


def reply(transcript: str, seed: int, turn: int) -> str:
    """The simulated assistant's answer to ``transcript``: deterministic for a seed and turn."""
    rng = random.Random(f"{seed}:{turn}:reply")
    words = set(re.findall(r"[a-z']+", transcript.lower()))
    for keywords, answer in _INTENTS:
        if words.intersection(keywords):
            return answer(rng)
    if not words:
        return "Sorry, I didn't catch that. Could you say it again?"
    return f"You said {transcript.strip().rstrip('.?!')}. I'm a simulated assistant, so that's all I know."


_TOKEN = re.compile(r"\s*[\w']+|\s*[^\w\s]")


def tokens(text: str) -> list[str]:
    """Split text roughly as an LLM tokenizer streams it: words with their leading space, punctuation."""
    return _TOKEN.findall(text)
