"""Regenerate the example corpus in ``examples/corpus`` (needs Debian's espeak-ng).

The recordings are synthetic speech made here, in four languages and several
formats, rates and channel counts, plus digital silence, so that the demo
exercises decoding, resampling, voice activity and language routing. The
committed files were made with this script; the tests never need it.

Usage: python examples/make_examples.py
"""

from __future__ import annotations

import csv
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"

#: (file, espeak voice, text, sampling rate, channels, format subtype)
RECORDINGS = [
    ("en/weather.wav", "en-us", "The weather is lovely today, so we are walking to the park "
     "after lunch. I really hope it does not rain.", 16000, 1, "PCM_16"),
    ("en/complaint.flac", "en-gb+m3", "I have been waiting for forty minutes and nobody has "
     "told me anything at all. This is not acceptable.", 22050, 2, "PCM_24"),
    ("de/wetter.wav", "de", "Heute ist das Wetter wunderschön, deshalb gehen wir nach dem "
     "Mittagessen in den Park.", 8000, 1, "PCM_16"),
    ("de/bahnhof.ogg", "de+f2", "Der Zug nach München hat leider zwanzig Minuten Verspätung, "
     "wir bitten um Entschuldigung.", 16000, 1, "VORBIS"),
    ("fr/meteo.mp3", "fr", "Il fait très beau aujourd'hui, alors nous allons nous promener "
     "au parc après le déjeuner.", 48000, 1, "MPEG_LAYER_III"),
    ("it/meteo.flac", "it", "Oggi il tempo è bellissimo, quindi dopo pranzo andiamo a fare "
     "una passeggiata al parco.", 44100, 2, "PCM_16"),
]


def speak(voice: str, text: str) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), text], check=True)
        samples, rate = sf.read(wav, dtype="float32")
    return samples, rate


def main() -> None:
    rows = []
    for name, voice, text, rate, channels, subtype in RECORDINGS:
        samples, source_rate = speak(voice, text)
        samples = soxr.resample(samples, source_rate, rate)
        if channels == 2:
            samples = np.stack([samples, 0.8 * samples], axis=1)
        path = CORPUS / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, samples, rate, subtype=subtype)
        rows.append({"path": f"corpus/{name}", "language": name.split("/")[0], "text": text})
    silence = CORPUS / "silence.wav"
    sf.write(silence, np.zeros(16000 * 4, np.float32), 16000, subtype="PCM_16")
    rows.append({"path": "corpus/silence.wav", "language": "", "text": ""})
    with open(HERE / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "language", "text"])
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
