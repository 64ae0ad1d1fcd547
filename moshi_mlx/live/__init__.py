"""The live audio app: devices, streams, the jitter buffer, the chat loop and its recording."""
