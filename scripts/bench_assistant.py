"""Benchmark `moshi-mlx assistant`: from the end of the user's speech to the assistant's first
audio, split into the end-of-turn decision, the LLM's first token and the TTS's first audio.

    python scripts/bench.py assistant                 # tiny random STT, TTS and LLM (any machine)
    python scripts/bench.py assistant --stt kyutai/stt-1b-en_fr-candle \\
        --tts kyutai/tts-1.6b-en_fr --llm mlx-community/Qwen2.5-3B-Instruct-4bit \\
        --speech question.wav                         # the default trio, on a Mac

The speech (a WAV, or a synthetic tone burst) is followed by silence and fed frame by frame to
the STT and the turn-taker exactly as the live loop feeds them (the microphone's level
included); the turn's end is then answered as live: the LLM writes, its words stream into the
TTS, and the clock stops at the first 80 ms of speech. The decision is counted in audio time
(how long after the speech ended the rule decided, which is what a user waits) plus the STT's
compute for that frame; the LLM and the TTS in wall-clock time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--stt", help="STT checkpoint (default: tiny, without the heads)")
    parser.add_argument("--tts", help="TTS checkpoint (default: tiny)")
    parser.add_argument("--voice", help="TTS voice (default: the tiny checkpoint's, or speak's)")
    parser.add_argument("--llm", help="mlx-lm model (default: tiny random Qwen2)")
    parser.add_argument("--speech", type=Path, help="the user's turn, a WAV (default: a tone)")
    parser.add_argument("--runs", type=int, default=3, help="turns measured (median reported)")
    parser.add_argument("--max-tokens", type=int, default=64, help="the reply's length bound")
    parser.add_argument(
        "--workdir",
        default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "moshi-bench", "assistant"),
        help="where the tiny models are written (and reused)",
    )
    return parser


def _tiny_models(workdir: Path) -> dict[str, Path]:
    from moshi_mlx.testing.tiny import (
        make_tiny_checkpoint,
        make_tiny_tts_checkpoint,
        strip_vad_heads,
    )
    from moshi_mlx.testing.tiny_llm import make_tiny_llm

    paths = {k: workdir / k for k in ("stt-heads", "stt", "tts", "llm")}
    if not (paths["llm"] / "config.json").is_file():
        make_tiny_checkpoint(paths["stt-heads"], kind="stt")
        strip_vad_heads(paths["stt-heads"], paths["stt"])
        make_tiny_tts_checkpoint(paths["tts"], seed=0)
        make_tiny_llm(paths["llm"])
    return paths


def _speech(path: Path | None) -> np.ndarray:
    from mimi_mlx.constants import SAMPLE_RATE
    from mimi_mlx.io.audio import read_audio

    if path is not None:
        return read_audio(path, SAMPLE_RATE)
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE  # 2 s of a warbling tone at about -16 dBFS
    return (0.2 * np.sin(2 * np.pi * (220 + 80 * np.sin(2 * np.pi * 3 * t)) * t)).astype(np.float32)


def _turn(stream, speech: np.ndarray):
    """Feed speech then silence as the live loop does; (turn, audio seconds the decision came
    after the speech ended, STT seconds of that frame, mean STT seconds per frame)."""
    from mimi_mlx.constants import FRAME_SECONDS, FRAME_SIZE
    from moshi_mlx.jobs.turns import TurnTaker
    from moshi_mlx.live.assistant import voiced

    stream.reset()
    taker = TurnTaker(stream)
    audio = np.concatenate([speech, np.zeros(10 * FRAME_SIZE * 13, np.float32)])
    audio = audio[: len(audio) // FRAME_SIZE * FRAME_SIZE].reshape(-1, FRAME_SIZE)
    speech_end = len(speech) / 24000 + stream.settings.prefix_samples / 24000
    times = []
    for i, frame in enumerate(audio):
        start = time.perf_counter()
        steps = stream.step(frame)
        taker.hear(voiced(frame))
        for (step,) in steps:
            turn = taker.add(step)
            if turn is not None:
                times.append(time.perf_counter() - start)
                return turn, (i + 1) * FRAME_SECONDS - speech_end, times[-1], np.mean(times)
        times.append(time.perf_counter() - start)
    raise RuntimeError("no end of turn within 17 s of silence: check the STT and the speech")


def run(args: argparse.Namespace) -> int:
    from moshi_mlx import load_checkpoint
    from moshi_mlx.commands.speak import DEFAULT_VOICE
    from moshi_mlx.jobs.assistant import Assistant
    from moshi_mlx.jobs.llm import LlmSettings, MlxTextModel
    from moshi_mlx.jobs.stt import SttStream
    from moshi_mlx.jobs.tts import TextToSpeech, TtsSettings, load_voice

    tiny = _tiny_models(Path(args.workdir)) if not (args.stt and args.tts and args.llm) else {}
    stt_source, tts_source = args.stt or tiny["stt"], args.tts or tiny["tts"]
    llm_source = args.llm or str(tiny["llm"])
    print(f"STT {stt_source}\nTTS {tts_source}\nLLM {llm_source}", flush=True)
    stt = load_checkpoint(stt_source)
    vad = bool(stt.lm.extra_heads)
    stream = SttStream(stt.lm, stt.mimi, stt.tokenizer, vad=vad)
    tts = TextToSpeech(load_checkpoint(tts_source))
    voice = load_voice(args.voice or ("tiny" if not args.tts else DEFAULT_VOICE), tts)
    llm = MlxTextModel(llm_source, LlmSettings(temperature=0, max_tokens=args.max_tokens))
    assistant = Assistant(llm, tts, [voice], TtsSettings(temperature=0), "Answer briefly.")
    speech = _speech(args.speech)
    print(f"end of turn: {'the end-of-turn head' if vad else 'the silence rule'}", flush=True)

    rows = []
    for run_index in range(args.runs + 1):  # the first turn warms up (compiles, caches)
        turn, waited, stt_frame, stt_mean = _turn(stream, speech)
        reply = assistant.reply(turn.text)
        while (frame := reply.next_frame()) is not None and not frame.pcm.size:
            pass
        t = reply.timings
        reply.cancel(0)
        assistant.messages.clear()
        if run_index == 0 or t.first_audio is None:
            continue
        rows.append(
            {
                "decision": waited + stt_frame,
                "stt_frame": stt_mean,
                "llm_first_token": t.llm_first_token,
                "tts_first_audio": t.first_audio - t.llm_first_token,
                "total": waited + stt_frame + t.first_audio,
            }
        )
    if not rows:
        raise RuntimeError("the replies were empty: nothing to time")
    print(f"median of {len(rows)} turns (seconds):")
    for key in rows[0]:
        values = [r[key] for r in rows]
        print(f"  {key:16s} {statistics.median(values):8.3f}   (min {min(values):.3f})")
    print(
        "  decision = audio after the speech ended until the rule decided + that STT step; "
        "total = decision + LLM first token + TTS first audio"
    )
    return 0
