"""`moshi-mlx assistant` live: the microphone into the STT, the LLM's reply out of the speaker.

One thread (the caller's) owns every model and MLX object; the audio callbacks only move NumPy
blocks (`audio_io`). Each pass of the loop does one small unit of work: an 80 ms microphone
frame through the STT, or one unit of the reply (an LLM piece, a frame of speech, kept at most
`AHEAD_FRAMES` ahead of the speaker), so listening never stops while the assistant talks.

The microphone's level also guides the turns (`TurnTaker.hear`): a frame (after echo
cancellation) louder than `VOICE_DB` is the user's voice (`voice`; with echo cancelling, unless
the speaker's output explains it: `EchoGuard`); a turn needs it, and ends after a second of
quiet as well as on the STT's rule.

Barge-in: while the assistant talks, a frame with the user's voice stops the playback at once
(the jitter buffer is flushed: silence within one device block), cancels the LLM, and the
conversation keeps only the words that were played.
The STT goes on hearing the user, whose new turn is answered as usual. While the assistant
talks uninterrupted, what the STT hears (its own echo) does not make a turn.

`--record DIR` keeps `user.wav` (what the STT heard), `mic.wav` (the raw microphone),
`moshi.wav` (the assistant's voice as generated), `played.wav` (the speaker, silences
included) and `session.json` (every turn: heard, written, spoken with times, timings).
"""

from __future__ import annotations

import json
import sys
import time

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE
from mimi_mlx.io.output_file import replace_on_success

from ..jobs.assistant import Reply
from ..jobs.turns import TurnTaker
from .audio_io import AudioIO, InputFrame
from .chat import NO_INPUT_TIMEOUT, POLL, SessionError
from .devices import choose_device
from .recording import Recorder, check_record_dir
from .signals import StopOnSignals
from .voice import EchoGuard, voiced

AHEAD_FRAMES = 8  # speech frames generated ahead of the speaker at most (a barge-in drops them)
PREFILL_FRAMES = 2  # the speaker's jitter buffer before playback starts
CAPACITY_FRAMES = 250  # never trimmed in practice: the reply is paced by AHEAD_FRAMES
MAX_LAG_FRAMES = 3  # microphone frames allowed to wait before the oldest are skipped


def run_live(args, load) -> dict:
    """Run the live assistant until Ctrl-C (or `--duration`); returns the session summary.

    Args:
        args: the command's options.
        load: `load(args) -> (Assistant, SttStream)`, called after the devices are checked.
    """
    input_device = choose_device(args.input_device, "input")
    output_device = choose_device(args.output_device, "output")
    if args.record is not None:
        check_record_dir(args.record, args.force)
    if args.echo_cancel == "on":
        from .echo import check_engine

        check_engine()
    assistant, stream = load(args)
    audio = AudioIO(
        input_device,
        output_device,
        prefill_frames=PREFILL_FRAMES,
        capacity_frames=CAPACITY_FRAMES,
        log_played=args.record is not None,
        echo_cancel=args.echo_cancel == "on",
    )
    session = _Session(assistant, stream, audio, args.record)
    return session.run(args.duration)


class _Session:
    def __init__(self, assistant, stream, audio: AudioIO, record):
        self.assistant, self.stream, self.audio = assistant, stream, audio
        self.taker = TurnTaker(stream)
        self.guard = EchoGuard() if audio.echo is not None else None
        self.recorder = Recorder(record, audio.output_device.rate) if record else None
        self.reply: Reply | None = None
        self.turn = None  # the user's turn being answered
        self.reply_played_from = 0  # samples the speaker had played when the reply started
        self.reply_pushed = 0  # samples of the reply sent to the speaker
        self.exchanges: list[dict] = []
        self.ratio = audio.output_device.rate / SAMPLE_RATE
        self.started = time.perf_counter()
        self.heard = 0  # samples the STT heard
        self.skipped = 0
        self.pending: list[tuple[InputFrame, bool]] = []  # frames read, not yet heard; voiced

    # -- the loop --------------------------------------------------------------------------------
    def run(self, duration: float | None) -> dict:
        self.stream.reset()
        try:
            with StopOnSignals() as stop, self.audio:
                self._loop(stop, duration)
            if self.reply is not None:
                self._interrupt()
        finally:
            if self.recorder is not None:
                self.recorder.close()
        return self._summary()

    def _loop(self, stop, duration: float | None) -> None:
        print(
            f"listening on {self.audio.input_device.name!r}, speaking on "
            f"{self.audio.output_device.name!r}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        while not stop.requested:
            if duration is not None and time.perf_counter() - self.started >= duration:
                break
            if self._hungry():  # the speaker first: an underrun is heard, a lagging STT not
                busy = self._speak()
                busy = self._listen() or busy
            else:
                busy = self._listen()
                busy = self._speak() or busy
            if not busy:
                self._check()
                time.sleep(POLL)

    def _check(self) -> None:
        capture = self.audio.microphone.capture
        elapsed = time.perf_counter() - self.started
        if capture.pace.count == 0 and elapsed > NO_INPUT_TIMEOUT:
            raise SessionError(f"no audio from the input device in {NO_INPUT_TIMEOUT:g} s")

    def _hungry(self) -> bool:
        """A reply is playing with less than the jitter buffer's prefill left to play."""
        if self.reply is None or self.reply.done:
            return False
        ahead = self.reply_pushed - (self._played() - self.reply_played_from)
        return ahead < PREFILL_FRAMES * FRAME_SIZE

    def _played(self) -> int:
        """Samples (24 kHz) the speaker has played since the session started."""
        buffer = self.audio.speaker.buffer
        return round((buffer.consumed - buffer.skipped) / self.ratio)

    # -- listening -------------------------------------------------------------------------------
    def _take(self) -> None:
        """Move the frames the microphone delivered into `pending`, checking each for the
        user's voice at once (cheap): a barge-in does not wait for the STT to get there."""
        self.audio.pull()  # (runs the echo canceller)
        while (frame := self.audio.read_frame()) is not None:
            voice = self._voice(frame)
            if voice and self.reply is not None:
                self._interrupt()
            self.pending.append((frame, voice))
        if len(self.pending) > MAX_LAG_FRAMES:  # the STT is behind: skip the oldest
            voice = any(v for _, v in self.pending)
            self.skipped += len(self.pending) - 1
            self.pending = [(self.pending[-1][0], voice)]

    def _voice(self, frame: InputFrame) -> bool:
        if self.guard is None:
            return voiced(frame.heard)
        return self.guard.hear(frame.heard, frame.mic, frame.reference, self.audio.echo_delay)

    def _listen(self) -> bool:
        self._take()
        if not self.pending:
            return False
        heard, voice = self.pending.pop(0)
        frame = heard.heard
        if self.recorder is not None:
            self.recorder.user.write(frame)
            self.recorder.mic.write(heard.mic)
            self.recorder.add_played(self.audio.drain_played())
        self.heard += len(frame)
        steps = self.stream.step(frame)
        self.taker.hear(voice)
        for (step,) in steps:
            turn = self.taker.add(step)
            if self.reply is not None:
                self.taker.reset()  # while the assistant talks, its own echo is no turn
            elif turn is not None:
                print(f"user: {turn.text}", flush=True)
                self._start(turn)
        return True

    # -- speaking --------------------------------------------------------------------------------
    def _start(self, turn) -> None:
        self.reply = self.assistant.reply(turn.text)
        self.turn = turn
        self.reply_played_from = self._played()
        self.reply_pushed = 0
        print("assistant:", end="", flush=True)

    def _speak(self) -> bool:
        self._take()
        reply = self.reply
        if reply is None:
            return False
        ahead = self.reply_pushed - (self._played() - self.reply_played_from)
        if not reply.done:
            if ahead >= AHEAD_FRAMES * FRAME_SIZE:
                return reply.write()  # the LLM writes on while the speaker catches up
            frame = reply.step()
            if frame is not None and frame.pcm.size:
                self.audio.play(frame.pcm)
                self.reply_pushed += len(frame.pcm)
                if self.recorder is not None:
                    self.recorder.moshi.write(frame.pcm)
                for w in frame.words:
                    print(f" {w.text}", end="", flush=True)
            return True
        if ahead <= 0:  # played to its end
            reply.finish()
            self._done(reply)
        return False

    def _interrupt(self) -> None:
        """Barge-in: silence now, the LLM cancelled, the played words kept."""
        reply = self.reply
        self.audio.speaker.buffer.flush()
        played = min(self.reply_pushed, self._played() - self.reply_played_from)
        reply.cancel(played)
        print(" [interrupted]", end="", flush=True)
        self._done(reply, played)

    def _done(self, reply: Reply, played: int | None = None) -> None:
        print(flush=True)
        self.exchanges.append(
            {
                "user": self.turn.to_dict(),
                "reply": reply.text,
                "spoken": [w.to_dict() for w in reply.spoken(played)],
                "interrupted": reply.interrupted,
                "timings": reply.timings.to_dict(),
            }
        )
        self.reply = None
        self.taker.reset()

    def _summary(self) -> dict:
        summary = {
            "llm": self.assistant.llm.name,
            "system": self.assistant.system,
            "heard_seconds": round(self.heard / SAMPLE_RATE, 3),
            "skipped_frames": self.skipped,
            "echo_frames": None if self.guard is None else self.guard.echo_frames,
            "turns": self.exchanges,
            "audio": self.audio.stats(),
        }
        if self.recorder is not None:
            folder = self.recorder.folder
            with replace_on_success(folder / "session.json") as tmp:
                tmp.write_text(json.dumps(summary, ensure_ascii=False, indent=1) + "\n")
        print(
            f"session: {summary['heard_seconds']:.1f} s heard, {len(self.exchanges)} turn(s), "
            f"{self.skipped} frames skipped",
            file=sys.stderr,
        )
        return summary
