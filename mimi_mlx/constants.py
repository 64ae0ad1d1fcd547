"""Kyutai Mimi's fixed facts, defined once: every model and app here speaks in its frames."""

SAMPLE_RATE = 24000  # Hz, mono
FRAME_SIZE = 1920  # samples per frame: 80 ms at 24 kHz
FRAME_RATE = SAMPLE_RATE / FRAME_SIZE  # 12.5 code frames per second
FRAME_SECONDS = FRAME_SIZE / SAMPLE_RATE  # 0.08
KYUTAI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"  # Mimi's file in Kyutai's repos
HF_FILE = "model.safetensors"  # Mimi's file in transformers' layout (`kyutai/mimi`)
