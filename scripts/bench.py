#!/usr/bin/env python3
"""Benchmarks, measured side by side in one run (these machines are shared and noisy).

python scripts/bench.py mimi        # Mimi: batch 10 s, streaming per 80 ms frame, vs PyTorch
python scripts/bench.py lm          # Moshi's LM: ms per step for each precision, memory
python scripts/bench.py quantize    # conversion time and memory, quantization report
python scripts/bench.py step        # one LM step: ours vs Kyutai's moshi_mlx 0.3.0, graph size
python scripts/bench.py aec         # echo cancellers: ERLE, double talk, CPU on simulated rooms
python scripts/bench.py stt         # Kyutai STT 1B: real-time factor, batch of 8, vs PyTorch
python scripts/bench.py tts         # TTS: time to first audio, real-time factor, vs PyTorch
python scripts/bench.py assistant   # end of speech -> first audio: turn, LLM, TTS
python scripts/bench.py serve       # the server: cost per chat frame, TTS first audio, STT streams

Every job prints the MLX device (and the LM jobs their dtypes), and runs unchanged on Metal,
CUDA and the CPU.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

COMMANDS = {
    "mimi": ("bench_mimi", "Mimi codec: ours vs Kyutai's PyTorch reference"),
    "lm": ("bench_lm", "Moshi language model: step time, memory, load time"),
    "quantize": ("bench_quantize", "checkpoint conversion and the quantization report"),
    "step": ("bench_step", "one LM step, ours vs Kyutai's moshi_mlx 0.3.0 (in .venv-kyutai/)"),
    "aec": ("bench_aec", "echo cancellers on the same simulated rooms"),
    "stt": ("bench_stt", "Kyutai STT 1B: real-time factor and memory, ours vs Kyutai's PyTorch"),
    "tts": ("bench_tts", "Kyutai's TTS: time to first audio, real-time factor, memory, vs PyTorch"),
    "assistant": ("bench_assistant", "end of the user's speech to the assistant's first audio"),
    "serve": ("bench_serve", "moshi-mlx serve against the in-process jobs: chat, TTS, STT"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # not written yet
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.configure_parser(p)
        p.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    if args.command != "step":  # (step prints it with its own header)
        from mimi_mlx.nn.backend import device_description

        print(f"device {device_description()}", flush=True)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
