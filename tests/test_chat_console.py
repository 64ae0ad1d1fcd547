"""The live transcript stays readable: with `--stats` or piped, Moshi's words come in whole
lines (ended by a pause of a second or at 80 characters) and statistics fall between lines,
on stderr; on a terminal without statistics, words appear as they come and a rare notice gets
its own line, the words so far shown again after it."""

from __future__ import annotations

from moshi_mlx.live.console import Console

WORDS = "Hello there, how are you doing today? I am fine, thank you very much for asking me."


def pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def feed(console: Console, text: str, first_step: int = 0, notice_every: int = 0) -> int:
    step = first_step
    for i, piece in enumerate(pieces(text)):
        console.piece(piece, step)
        if notice_every and i % notice_every == notice_every - 1:
            console.notice(f"[stats] step {step}")
        step += 2
    return step


def test_statistics_never_split_a_line_of_text(capsys):
    console = Console(show_text=True, whole_lines=True)
    step = feed(console, "Hello there, how are you?", notice_every=2)
    for quiet in range(step, step + 20):  # a pause of 1.6 s ends the line
        console.tick(quiet)
    feed(console, "Fine, thanks.", step + 20, notice_every=1)
    console.end_line()
    out, err = capsys.readouterr()
    assert out == "Hello there, how are you?\nFine, thanks.\n"
    assert err.count("[stats]") == 4 and "Hello" not in err


def test_piped_lines_are_whole_and_wrapped(capsys):
    console = Console(show_text=True, whole_lines=True)
    feed(console, WORDS)
    console.end_line()
    lines = capsys.readouterr().out.splitlines()
    assert " ".join(lines) == WORDS and len(lines) == 2
    assert all(len(line) <= Console.WIDTH for line in lines)


def test_terminal_words_as_they_come_and_a_notice_on_its_own_line(capsys):
    console = Console(show_text=True, whole_lines=False)
    console.piece("Hello", 0)
    console.piece(" there", 1)
    assert capsys.readouterr().out == "Hello there"  # no waiting for the line's end
    console.notice("lagging: skipped 3 input frames")
    console.piece(" friend", 2)
    console.end_line()
    out, err = capsys.readouterr()
    assert out == "\nHello there friend\n" and err == "lagging: skipped 3 input frames\n"


def test_quiet_prints_no_text(capsys):
    console = Console(show_text=False, whole_lines=True)
    feed(console, WORDS)
    console.end_line()
    assert capsys.readouterr().out == ""
