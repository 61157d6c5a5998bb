"""PCM audio: 16 kHz mono int16 frames, a speech-like synthesizer, and espeak-ng.

The synthesizer makes a signal with the shape of speech (voiced syllables with a pitch contour and vowel
formants, consonant noise, pauses between words) so that frames carry realistic bytes and durations. It uses
numpy when it is installed and the standard library otherwise; both render the same seeded plan.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import math
import random
import re
import shutil
import sys
import wave
from array import array
from dataclasses import dataclass
from typing import Any, Optional


__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "REPLY_CHUNK_BYTES",
    "REPLY_CHUNK_MS",
    "SAMPLE_RATE",
    "EspeakError",
    "chunks",
    "duration",
    "espeak",
    "espeak_path",
    "numpy_or_none",
    "resample",
    "silence",
    "speech",
]

SAMPLE_RATE = 16000
SAMPLE_WIDTH = 2
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * SAMPLE_WIDTH * FRAME_MS // 1000  # 640
REPLY_CHUNK_MS = 40
REPLY_CHUNK_BYTES = SAMPLE_RATE * SAMPLE_WIDTH * REPLY_CHUNK_MS // 1000  # 1280

_PEAK = 0.3 * 32767  # speech level, well clear of clipping
_FLOOR = 24.0  # room noise: a real microphone never sends digital silence


def numpy_or_none() -> Any:
    """The numpy module if installed (an optional speed-up), else ``None``."""
    try:
        return importlib.import_module("numpy")
    except ImportError:
        return None


def duration(pcm: bytes) -> float:
    """Seconds of audio in 16 kHz mono int16 PCM."""
    return len(pcm) / (SAMPLE_RATE * SAMPLE_WIDTH)


def chunks(pcm: bytes, size: int) -> list[bytes]:
    """Split PCM into messages of ``size`` bytes; the last one is padded with silence, as a codec would."""
    out = [pcm[i : i + size] for i in range(0, len(pcm), size)]
    if out and len(out[-1]) < size:
        out[-1] = out[-1] + bytes(size - len(out[-1]))
    return out


def _to_bytes(samples: array[int]) -> bytes:
    if sys.byteorder == "big":  # the wire format is little-endian
        samples = array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def silence(seconds: float, seed: str) -> bytes:
    """Room noise at the microphone's floor, for ``seconds``."""
    rng = random.Random(f"{seed}:silence")
    n = int(seconds * SAMPLE_RATE)
    return _to_bytes(array("h", (int(rng.uniform(-_FLOOR, _FLOOR)) for _ in range(n))))


# ---------------------------------------------------------------------------------------------------------
# Speech-like synthesis

# First three formants (Hz) of English vowels (Peterson and Barney, male voices).
_VOWELS = (
    (730, 1090, 2440),  # a
    (270, 2290, 3010),  # i
    (300, 870, 2240),  # u
    (530, 1840, 2480),  # e
    (570, 840, 2410),  # o
    (660, 1720, 2410),  # ae
)
_TABLE_SIZE = 512
_REFERENCE_F0 = 150.0
_TABLES: list[list[float]] = []


def _tables() -> list[list[float]]:
    """One pitch period per vowel: harmonics weighted by the vowel's formant resonances, peak 1."""
    if not _TABLES:
        for formants in _VOWELS:
            table = [0.0] * _TABLE_SIZE
            harmonic = 1
            while harmonic * _REFERENCE_F0 < 4000:
                freq = harmonic * _REFERENCE_F0
                gain = sum(1.0 / (1.0 + ((freq - f) / 90.0) ** 2) for f in formants) / harmonic**0.5
                for i in range(_TABLE_SIZE):
                    table[i] += gain * math.sin(2 * math.pi * harmonic * i / _TABLE_SIZE)
                harmonic += 1
            peak = max(abs(v) for v in table)
            _TABLES.append([v / peak for v in table])
    return _TABLES


@dataclass(frozen=True)
class _Segment:
    kind: str  # "voiced", "noise" or "gap"
    samples: int
    f0_start: float = 0.0
    f0_end: float = 0.0
    vowel: int = 0
    level: float = 1.0


def _syllables(word: str) -> int:
    return max(1, len(re.findall(r"[aeiouy]+", word.lower())))


def _plan(text: str, seed: str) -> list[_Segment]:
    """Segments for ``text``: about five syllables a second, pitch falling (rising for a question)."""
    rng = random.Random(f"{seed}:speech")
    base = rng.uniform(105.0, 190.0)  # the speaker's pitch
    words = re.findall(r"[\w']+|[,.;:!?]", text)
    spoken = [w for w in words if w[0].isalnum()]
    total = sum(_syllables(w) for w in spoken) or 1
    question = text.rstrip().endswith("?")
    segments: list[_Segment] = []
    done = 0

    def ms(value: float) -> int:
        return int(value * SAMPLE_RATE / 1000)

    for word in words:
        if not word[0].isalnum():
            segments.append(_Segment("gap", ms(240 if word in ".!?" else 140)))
            continue
        for _ in range(_syllables(word)):
            position = done / total
            done += 1
            # Declination: pitch drifts down over the phrase; a question rises on its last syllables.
            f0 = base * (1.1 - 0.2 * position)
            if question and position > 0.75:
                f0 *= 1.0 + 1.2 * (position - 0.75)
            if rng.random() < 0.7:
                segments.append(_Segment("noise", ms(rng.uniform(25, 55)), level=rng.uniform(0.15, 0.35)))
            segments.append(
                _Segment(
                    "voiced",
                    ms(rng.uniform(90, 150)),
                    f0_start=f0 * rng.uniform(0.97, 1.03),
                    f0_end=f0 * rng.uniform(0.9, 1.0),
                    vowel=rng.randrange(len(_VOWELS)),
                    level=rng.uniform(0.6, 1.0),
                )
            )
        segments.append(_Segment("gap", ms(rng.uniform(30, 70))))
    return segments


def _envelope(i: int, n: int) -> float:
    attack, release = SAMPLE_RATE * 15 // 1000, SAMPLE_RATE * 30 // 1000
    return min(1.0, i / attack, (n - i) / release)


def _render_stdlib(segments: list[_Segment], seed: str) -> bytes:
    rng = random.Random(f"{seed}:noise")
    tables = _tables()
    out = array("h")
    phase = 0.0
    for seg in segments:
        n = seg.samples
        if seg.kind == "voiced":
            table = tables[seg.vowel]
            step = (seg.f0_end - seg.f0_start) / n
            for i in range(n):
                phase = (phase + (seg.f0_start + step * i) / SAMPLE_RATE) % 1.0
                value = table[int(phase * _TABLE_SIZE)] * _envelope(i, n) * seg.level * _PEAK
                out.append(int(value + rng.uniform(-_FLOOR, _FLOOR)))
        elif seg.kind == "noise":
            amplitude = seg.level * _PEAK
            out.extend(int(rng.uniform(-1.0, 1.0) * _envelope(i, n) * amplitude) for i in range(n))
        else:
            out.extend(int(rng.uniform(-_FLOOR, _FLOOR)) for _ in range(n))
    return _to_bytes(out)


def _render_numpy(np: Any, segments: list[_Segment], seed: str) -> bytes:
    rng = np.random.default_rng(random.Random(f"{seed}:noise").getrandbits(64))
    tables = np.array(_tables())
    parts = []
    phase = 0.0
    for seg in segments:
        n = seg.samples
        i = np.arange(n)
        envelope = np.minimum(1.0, np.minimum(i / (SAMPLE_RATE * 15 // 1000), (n - i) / (SAMPLE_RATE * 30 // 1000)))
        floor = rng.uniform(-_FLOOR, _FLOOR, n)
        if seg.kind == "voiced":
            f0 = np.linspace(seg.f0_start, seg.f0_end, n, endpoint=False)
            phases = (phase + np.cumsum(f0 / SAMPLE_RATE)) % 1.0
            phase = float(phases[-1]) if n else phase
            index = (phases * _TABLE_SIZE).astype(np.int64) % _TABLE_SIZE
            parts.append(tables[seg.vowel][index] * envelope * seg.level * _PEAK + floor)
        elif seg.kind == "noise":
            parts.append(rng.uniform(-1.0, 1.0, n) * envelope * seg.level * _PEAK)
        else:
            parts.append(floor)
    signal = np.concatenate(parts) if parts else np.zeros(0)
    return bytes(signal.astype("<i2").tobytes())


def speech(text: str, seed: str) -> bytes:
    """Speech-like 16 kHz PCM for ``text``: the same seed gives the same plan (and, per backend, bytes)."""
    segments = _plan(text, seed)
    np = numpy_or_none()
    return _render_numpy(np, segments, seed) if np is not None else _render_stdlib(segments, seed)


# ---------------------------------------------------------------------------------------------------------
# espeak-ng


class EspeakError(RuntimeError):
    """espeak-ng is missing or failed."""


def espeak_path() -> Optional[str]:
    """The espeak-ng executable, if installed."""
    return shutil.which("espeak-ng")


def resample(pcm: bytes, source_rate: int, target_rate: int = SAMPLE_RATE) -> bytes:
    """Linear-interpolation resampling of mono int16 PCM (espeak-ng speaks at 22,050 Hz)."""
    if source_rate == target_rate or not pcm:
        return pcm
    samples = array("h", pcm[: len(pcm) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    n = int(len(samples) * target_rate / source_rate)
    ratio = source_rate / target_rate
    np = numpy_or_none()
    if np is not None:
        source = np.frombuffer(samples.tobytes(), dtype=np.int16).astype(np.float64)
        out = np.interp(np.arange(n) * ratio, np.arange(len(source)), source)
        return bytes(out.astype("<i2").tobytes())
    last = len(samples) - 1
    resampled = array("h", bytes(2 * n))
    for i in range(n):
        x = i * ratio
        j = int(x)
        a = samples[j]
        b = samples[j + 1] if j < last else a
        resampled[i] = int(a + (b - a) * (x - j))
    return _to_bytes(resampled)


async def espeak(text: str, *, voice: str = "en-us", words_per_minute: int = 175) -> bytes:
    """``text`` spoken by espeak-ng, as 16 kHz PCM. The text goes through stdin, never the command line."""
    path = espeak_path()
    if path is None:
        raise EspeakError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    process = await asyncio.create_subprocess_exec(
        path,
        "-v",
        voice,
        "-s",
        str(words_per_minute),
        "--stdout",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(text.encode("utf-8"))
    if process.returncode != 0 or not out:
        raise EspeakError(f"espeak-ng failed ({process.returncode}): {err.decode(errors='replace').strip()}")
    # espeak-ng streams its WAV: the header's sizes are placeholders, so read whatever data follows.
    with wave.open(io.BytesIO(out)) as wav:
        rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
        data = wav.readframes(2**31 - 1)
    if width != SAMPLE_WIDTH or channels != 1:
        raise EspeakError(f"espeak-ng produced {channels} channels of {8 * width}-bit audio")
    return resample(data, rate)
