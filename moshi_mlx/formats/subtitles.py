"""A transcript as text, JSON, SubRip (.srt) or WebVTT (.vtt).

Subtitle cues group consecutive words: a cue ends at a pause of `MAX_GAP` seconds, after
`MAX_CUE_SECONDS`, or when its text would pass two lines of `LINE_CHARS` characters; each cue is
shown from its first word's start to its last word's end (at least `MIN_CUE_SECONDS`), never
past the next cue's start, so cues do not overlap. With the ends of turns (`--vad`), a cue also
ends at each, and a text transcript puts a blank line between turns.
"""

from __future__ import annotations

import json

from .words import Word

FORMATS = ("txt", "json", "srt", "vtt")
LINE_CHARS = 42
MAX_GAP = 1.0
MAX_CUE_SECONDS = 6.0
MIN_CUE_SECONDS = 0.5


def turns(words: list[Word], ends: list[float]) -> list[list[Word]]:
    """Split words at the ends of turns (times in seconds): a word that starts after an end
    begins the next turn."""
    out: list[list[Word]] = []
    pending = sorted(ends)
    for w in words:
        if not out or (pending and w.start >= pending[0] and out[-1]):
            out.append([])
        while pending and w.start >= pending[0]:
            pending.pop(0)
        out[-1].append(w)
    return out


def cues(words: list[Word], ends: list[float] | None = None) -> list[tuple[float, float, str]]:
    """Group words into non-overlapping (start, end, text) cues of at most two lines, none
    across an end of turn."""
    groups: list[list[Word]] = []
    turn_of = {id(w): i for i, turn in enumerate(turns(words, ends or [])) for w in turn}
    for w in words:
        if groups:
            group = groups[-1]
            text = " ".join(x.text for x in group + [w])
            if (
                turn_of[id(w)] == turn_of[id(group[-1])]
                and w.start - group[-1].end <= MAX_GAP
                and w.end - group[0].start <= MAX_CUE_SECONDS
                and len(text) <= 2 * LINE_CHARS
            ):
                group.append(w)
                continue
        groups.append([w])
    out = []
    for i, group in enumerate(groups):
        start = group[0].start
        end = max(group[-1].end, start + MIN_CUE_SECONDS)
        if i + 1 < len(groups):
            end = min(end, groups[i + 1][0].start)
        end = max(end, start + 0.001)  # a cue is never empty
        out.append((start, end, _two_lines([w.text for w in group])))
    return out


def _two_lines(words: list[str]) -> str:
    text = " ".join(words)
    if len(text) <= LINE_CHARS:
        return text
    best = min(
        range(1, len(words)),
        key=lambda i: abs(len(" ".join(words[:i])) - len(" ".join(words[i:]))),
    )
    return " ".join(words[:best]) + "\n" + " ".join(words[best:])


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(words: list[Word], ends: list[float] | None = None) -> str:
    blocks = [
        f"{i}\n{_stamp(a, ',')} --> {_stamp(b, ',')}\n{text}\n"
        for i, (a, b, text) in enumerate(cues(words, ends), 1)
    ]
    return "\n".join(blocks)


def to_vtt(words: list[Word], ends: list[float] | None = None) -> str:
    blocks = [
        f"{_stamp(a, '.')} --> {_stamp(b, '.')}\n{text}\n" for a, b, text in cues(words, ends)
    ]
    return "\n".join(["WEBVTT\n", *blocks])


def render(transcription, fmt: str, info: dict | None = None) -> str:
    """The content of a transcript file in format `fmt` (one of `FORMATS`)."""
    ends = getattr(transcription, "end_of_turn", None)
    if fmt == "txt":
        if not ends:
            return transcription.text + "\n"
        paragraphs = [" ".join(w.text for w in t) for t in turns(transcription.words, ends)]
        return "\n\n".join(paragraphs) + "\n"
    if fmt == "json":
        data = {**(info or {}), **transcription.to_dict()}
        return json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    if fmt == "srt":
        return to_srt(transcription.words, ends)
    if fmt == "vtt":
        return to_vtt(transcription.words, ends)
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
