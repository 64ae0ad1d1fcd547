"""The live audio apps: devices, streams, microphone, speaker, jitter buffer, echo cancellation,
the chat loop (console, signals, summary), dictation and recording."""
