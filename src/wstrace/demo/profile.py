"""The latency profile of the simulated engines, from published voice-agent measurements.

Medians and 95th percentiles per stage come from the research note on streaming AI observability (§5:
Pipecat and LiveKit figures, public latency breakdowns). Each draw is lognormal around the median, with the
spread that puts the 95th percentile where the sources put it, and is seeded by (seed, turn, stage): the same
seed gives the same draws whatever the interleaving of stages. ``speed`` divides every delay.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


__all__ = ["PROFILES", "Pacing", "Profile", "Stage"]

_Z95 = 1.6449  # the standard normal's 95th percentile


@dataclass(frozen=True)
class Stage:
    """One stage's latency in seconds: median and 95th percentile."""

    p50: float
    p95: float

    @property
    def sigma(self) -> float:
        return math.log(self.p95 / self.p50) / _Z95 if self.p95 > self.p50 else 0.0


@dataclass(frozen=True)
class Profile:
    """Per-turn latencies of a cascaded voice pipeline (device endpointer, ASR, LLM, TTS)."""

    name: str
    endpointing: Stage
    """Trailing silence the device's endpointer waits for before it ends the turn."""
    asr_final: Stage
    """End of the user's audio to the final transcript."""
    llm_ttft: Stage
    """LLM request to first token."""
    llm_token: Stage
    """Gap between tokens."""
    tts_ttfb: Stage
    """Text in to first audio chunk out, per sentence."""
    tts_realtime_factor: float
    """Synthesis time per second of audio after the first chunk (0.2: five times faster than real time)."""


PROFILES = {
    # The "tuned" column: streaming ASR, a fast hosted LLM, streaming TTS; voice-to-voice about 0.7 s.
    "tuned": Profile(
        name="tuned",
        endpointing=Stage(0.25, 0.40),
        asr_final=Stage(0.065, 0.15),
        llm_ttft=Stage(0.28, 0.50),
        llm_token=Stage(0.025, 0.045),
        tts_ttfb=Stage(0.11, 0.20),
        tts_realtime_factor=0.2,
    ),
    # The "typical" column: default endpointing, batch-final ASR; voice-to-voice about 1.3 s.
    "typical": Profile(
        name="typical",
        endpointing=Stage(0.6, 1.2),
        asr_final=Stage(0.2, 0.6),
        llm_ttft=Stage(0.4, 0.7),
        llm_token=Stage(0.03, 0.06),
        tts_ttfb=Stage(0.2, 0.3),
        tts_realtime_factor=0.3,
    ),
}


class Pacing:
    """Seeded latency draws from a profile, scaled by ``speed``."""

    def __init__(self, profile: Profile, seed: int, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.profile = profile
        self.seed = seed
        self.speed = speed

    def rng(self, turn: int, what: str) -> random.Random:
        """A generator for one turn and purpose; string seeds hash the same in every process."""
        return random.Random(f"{self.seed}:{turn}:{what}")

    def sample(self, stage: Stage, rng: random.Random) -> float:
        """A lognormal draw in seconds, capped at four times the median; not scaled."""
        return min(stage.p50 * math.exp(stage.sigma * rng.gauss(0.0, 1.0)), 4 * stage.p50)

    def draw(self, stage: Stage, rng: random.Random) -> float:
        """A delay to wait for: a draw divided by ``speed``."""
        return self.sample(stage, rng) / self.speed

    def scale(self, seconds: float) -> float:
        """A real-time duration (audio playout, frame pacing) at this speed."""
        return seconds / self.speed
