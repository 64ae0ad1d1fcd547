"""Benchmark `moshi-mlx assistant`: from the end of the user's speech to the assistant's first
audio, split into the end-of-turn decision, the LLM's first token and the TTS's first audio.

    python scripts/bench.py assistant                 # tiny random STT, TTS and LLM (any machine)
    python scripts/bench.py assistant --widths real   # the default trio's widths, 2 layers each
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
    parser.add_argument(
        "--widths",
        choices=("tiny", "real"),
        default="tiny",
        help="random models: tiny, or the default trio's real widths (STT 1B, TTS 1.6B, "
        "Qwen2.5-3B) with --layers layers each",
    )
    parser.add_argument("--layers", type=int, default=2, help="with --widths real (default 2)")
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


# Qwen2.5-3B-Instruct's widths (the default LLM; its tokenizer stays the tiny one)
QWEN_3B = {
    "hidden_size": 2048, "intermediate_size": 11008, "num_attention_heads": 16,
    "num_key_value_heads": 2, "max_position_embeddings": 32768,
}  # fmt: skip


def _real_widths(workdir: Path, layers: int) -> dict[str, Path]:
    """Random models at the default trio's widths with `layers` layers each, written once into
    `workdir`: the STT 1B (without its heads, as the `-mlx` repos: the silence rule), the TTS
    1.6B, both with a real-size Mimi, and Qwen2.5-3B's widths; the text tokenizers are tiny
    (the STT's text vocabulary is the tokenizer's)."""
    import json
    import shutil

    import sentencepiece
    from bench_stt import stt_config
    from bench_tts import _write_float

    from mimi_mlx.constants import KYUTAI_FILE
    from moshi_mlx.model.config import LmConfig
    from moshi_mlx.testing.tiny import STT_FILES, STT_KEYS, save_random_lm
    from moshi_mlx.testing.tiny_llm import make_tiny_llm
    from moshi_mlx.testing.tiny_parts import write_tiny_tokenizer

    paths = {k: workdir / f"{k}-real-{layers}l" for k in ("stt", "tts", "llm")}
    if not (paths["tts"] / "config.json").is_file():
        _write_float(layers, paths["tts"])
    if not (paths["stt"] / "config.json").is_file():
        paths["stt"].mkdir(parents=True, exist_ok=True)
        write_tiny_tokenizer(paths["stt"], STT_FILES["tokenizer_name"])
        spm = sentencepiece.SentencePieceProcessor(
            model_file=str(paths["stt"] / STT_FILES["tokenizer_name"])
        )
        cfg = {k: v for k, v in stt_config(layers).items() if not k.startswith("extra_heads")}
        cfg["text_card"] = spm.get_piece_size()
        weights = save_random_lm(LmConfig.from_dict(cfg), paths["stt"], seed=0)
        shutil.copyfile(paths["tts"] / KYUTAI_FILE, paths["stt"] / STT_FILES["mimi_name"])
        config = {**cfg, **STT_KEYS, **STT_FILES, "moshi_name": weights.name}
        (paths["stt"] / "config.json").write_text(json.dumps(config))
    if not (paths["llm"] / "config.json").is_file():
        make_tiny_llm(paths["llm"], scale=0.02, widths={**QWEN_3B, "num_hidden_layers": layers})
    return {**paths, "voice": paths["tts"] / "voices" / "bench.safetensors"}


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

    tiny = {}
    if not (args.stt and args.tts and args.llm):
        workdir = Path(args.workdir)
        tiny = (
            _tiny_models(workdir) if args.widths == "tiny" else _real_widths(workdir, args.layers)
        )
    stt_source, tts_source = args.stt or tiny["stt"], args.tts or tiny["tts"]
    llm_source = args.llm or str(tiny["llm"])
    print(f"STT {stt_source}\nTTS {tts_source}\nLLM {llm_source}", flush=True)
    stt = load_checkpoint(stt_source)
    vad = bool(stt.lm.extra_heads)
    stream = SttStream(stt.lm, stt.mimi, stt.tokenizer, vad=vad)
    tts = TextToSpeech(load_checkpoint(tts_source))
    default_voice = {"tiny": "tiny", "real": str(tiny.get("voice"))}[args.widths]
    voice = load_voice(args.voice or (default_voice if not args.tts else DEFAULT_VOICE), tts)
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
