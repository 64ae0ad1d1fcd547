"""What a new user hit (issue 17): inputs never overwritten, no false echoes, batch output a
program can read, one exit-code rule, and tools that agree on names, `--version`, `--model`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from moshi_app import REPO, cli, make_speech, read, speech_wav, tiny_checkpoint

from mimi_mlx.cli import configure_parser as mimi_parser
from mimi_mlx.cli import main as mimi_main
from moshi_mlx.cli import main as moshi_main
from quantize.cli import main as quantize_main

__all__ = ["speech_wav", "tiny_checkpoint"]  # fixtures used here

RATE = 24000


@pytest.fixture(scope="module")
def stt(tmp_path_factory) -> Path:
    from moshi_mlx.testing.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("stt") / "ckpt", kind="stt")


@pytest.fixture(scope="module")
def tts(tmp_path_factory) -> Path:
    from moshi_mlx.testing.tiny import make_tiny_tts_checkpoint

    return make_tiny_tts_checkpoint(tmp_path_factory.mktemp("tts") / "ckpt", seed=0)


@pytest.fixture(scope="module")
def two_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("two")
    return [
        make_speech(folder / "one.wav", "Hello, this is the first file."),
        make_speech(folder / "two.wav", "And the second one."),
    ]


def call(main, capsys, *args) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


# -- nothing the user gave is overwritten, whatever the spelling -----------------------------------
def _spellings(path: Path, tmp_path: Path) -> dict[str, Path]:
    link = tmp_path / "link.wav"
    link.symlink_to(path)
    hard = tmp_path / "hard.wav"
    os.link(path, hard)
    return {
        "same": path,
        "symlink": link,
        "hard link": hard,
        "dotdot": path.parent / ".." / path.parent.name / path.name,
    }


@pytest.mark.parametrize("spelling", ["same", "symlink", "hard link", "dotdot"])
def test_no_tool_overwrites_its_input_even_with_force(capsys, tmp_path, spelling, tts):
    source = tmp_path / "in" / "talk.wav"
    source.parent.mkdir()
    sf.write(str(source), np.sin(np.arange(RATE) / 10).astype(np.float32) * 0.3, RATE)
    original = source.read_bytes()
    other = _spellings(source, tmp_path)[spelling]
    text = tmp_path / "words.txt"
    text.write_text("Hello there.")
    cases = [
        (mimi_main, ["roundtrip", source, other, "--force"]),
        (mimi_main, ["encode", source, other, "--force"]),  # (a codes name is checked after)
        (moshi_main, ["run", source, other, "--force", "--checkpoint", "x"]),
        (moshi_main, ["transcribe", source, "-o", other, "--force", "--checkpoint", "x"]),
        (moshi_main, ["echo-cancel", source, tmp_path / "played.wav", other, "--force"]),
    ]
    for main, argv in cases:
        status, _, err = call(main, capsys, *argv)
        assert status == 2 and "would overwrite the input" in err, (argv, err)
        assert source.read_bytes() == original
    # the companion outputs: speak's --json, run's OUT.txt / OUT.json
    status, _, err = call(
        moshi_main, capsys, "speak", "--text-file", text, "o.wav", "--json", text, "--force"
    )
    assert status == 2 and "would overwrite the input" in err and text.read_text() == "Hello there."


def test_run_refuses_a_companion_transcript_that_is_an_input(capsys, tmp_path):
    session = tmp_path / "answer.json"
    session.write_text("{}")
    status, _, err = call(
        moshi_main, capsys, "run", "in.wav", tmp_path / "answer.wav", "--session", session
    )
    assert status == 2 and "would overwrite the input" in err and session.read_text() == "{}"


# -- echo-cancel: no echo claimed where there is none --------------------------------------------
@pytest.fixture(scope="module")
def voices():
    from echo_room import speech

    moshi = speech("I am Moshi. Let me tell you a story about a cat in the sun.", "en-us+f3")
    other = speech("The weather is fine and the market opens at nine tomorrow.", "en-us+f3")
    return moshi, other


def test_echo_cancel_finds_no_echo_in_unrelated_recordings_and_keeps_mic(voices, tmp_path):
    moshi, other = voices
    sf.write(tmp_path / "mic.wav", other, RATE, subtype="FLOAT")
    sf.write(tmp_path / "played.wav", moshi, RATE, subtype="FLOAT")
    sf.write(tmp_path / "short.wav", moshi[: RATE // 10], RATE, subtype="FLOAT")
    for played, out in (("played.wav", "out.wav"), ("short.wav", "out2.wav")):
        r = cli("echo-cancel", tmp_path / "mic.wav", tmp_path / played, tmp_path / out)
        assert r.returncode == 0, r.stderr
        assert "no echo of PLAYED" in r.stderr and "MIC as recorded" in r.stderr, r.stderr
        np.testing.assert_array_equal(read(tmp_path / out), other)


def test_a_voice_like_moshis_never_gives_the_live_canceller_a_delay(voices):
    """The live re-alignment moves the reference on two agreeing delay estimates: a user whose
    voice resembles Moshi's (here the same synthetic voice, other words) must give none."""
    from moshi_mlx.live.echo import Canceller

    moshi, other = voices
    c = Canceller()
    n = min(len(moshi), len(other)) // 1920 * 1920
    for i in range(0, n, 1920):
        c.process(0.5 * other[i : i + 1920], moshi[i : i + 1920])
    assert c.estimates == 0 and c.delay_ms is None


# -- the wrong kind of checkpoint names the command that runs it ----------------------------------
def test_run_with_an_stt_or_tts_checkpoint_names_its_kind_and_command(
    capsys, stt, tts, speech_wav, tmp_path
):
    for ckpt, kind, command in ((stt, "speech-to-text", "transcribe"), (tts, "text-to-speech",
                                                                         "speak")):  # fmt: skip
        status, _, err = call(
            moshi_main, capsys, "run", speech_wav, tmp_path / "o.wav", "--checkpoint", ckpt
        )
        assert status == 1 and kind in err and f"moshi-mlx {command} --checkpoint" in err, err
        assert err.count("\n") == 1


# -- batch output a program can read ----------------------------------------------------------
def test_transcribe_json_to_stdout_is_one_line_per_file_with_its_name(capsys, stt, two_files):
    status, out, err = call(
        moshi_main, capsys, "transcribe", *two_files, "--checkpoint", stt, "--format", "json", "-q"
    )
    assert status == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert sorted(d["file"] for d in docs) == sorted(str(p) for p in two_files)
    status, out, err = call(moshi_main, capsys, "transcribe", *two_files, "--checkpoint", stt)
    assert status == 0, err
    for p in two_files:
        assert f"==> {p} <==" in out
    status, out, _ = call(moshi_main, capsys, "transcribe", two_files[0], "--checkpoint", stt)
    assert "==>" not in out and out.strip()  # one file: the text alone


def test_transcribe_output_names_are_checked(capsys, stt, two_files, tmp_path):
    name = tmp_path / "texts"
    status, _, err = call(moshi_main, capsys, "transcribe", *two_files, "--checkpoint", stt,
                          "-o", name)  # fmt: skip
    assert status == 2 and "folder" in err and not name.exists(), err
    status, _, err = call(moshi_main, capsys, "transcribe", *two_files, "--checkpoint", stt,
                          "-o", f"{name}/", "-q")  # fmt: skip
    assert status == 0 and sorted(p.name for p in name.iterdir()) == ["one.txt", "two.txt"]
    for argv in (["-o", tmp_path / "out.docx"], ["-o", tmp_path / "t.srt", "--format", "json"]):
        status, _, err = call(
            moshi_main, capsys, "transcribe", two_files[0], "--checkpoint", stt, *argv
        )
        assert status == 2, err
        assert not list(tmp_path.glob("out.docx")) and not list(tmp_path.glob("t.srt"))


def test_each_file_is_handed_over_as_soon_as_it_is_done(stt, two_files):
    from moshi_mlx.jobs.transcribe import transcribe_files
    from moshi_mlx.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(str(stt))
    done = []
    results = transcribe_files(
        ckpt.lm, ckpt.mimi, ckpt.tokenizer, two_files, batch_size=2, on_done=done.append
    )
    assert sorted(id(r) for r in done) == sorted(id(r) for r in results)
    assert all(r.text == r.text.strip() for r in done)
    assert [r.path for r in done][0] == two_files[1]  # the shorter file first


def test_vad_marks_turns_in_text_and_subtitles():
    from moshi_mlx.formats.subtitles import render
    from moshi_mlx.formats.words import Word
    from moshi_mlx.jobs.transcribe import Transcription

    words = [Word("Hello", 0.0, 0.3), Word("there.", 0.35, 0.6), Word("Yes?", 0.8, 1.0)]
    t = Transcription(Path("a.wav"), 2.0, "Hello there. Yes?", words, end_of_turn=[0.65])
    assert render(t, "txt") == "Hello there.\n\nYes?\n"
    assert render(t, "srt").count("-->") == 2
    assert render(t, "vtt").count("-->") == 2
    t.end_of_turn = None
    assert render(t, "txt") == "Hello there. Yes?\n" and render(t, "srt").count("-->") == 1


# -- exit codes: 1 on a failure, 2 on a usage error, in every tool ---------------------------------
MISSING = "/nonexistent/missing.wav"


@pytest.mark.parametrize(
    "main, argv, code, fragment",
    [
        (mimi_main, ["encode", MISSING, "o.safetensors"], 1, "missing.wav"),
        (mimi_main, ["roundtrip", MISSING, "o.wav"], 1, "missing.wav"),
        (mimi_main, ["encode", "a.wav", "o.safetensors", "--bogus"], 2, "`mimi-mlx encode --help`"),
        (mimi_main, ["encode", "a.wav", "o.safetensors", "-n", "99"], 2, "1..32"),
        (moshi_main, ["run", MISSING, "o.wav", "--checkpoint", "x"], 1, "missing.wav"),
        (moshi_main, ["transcribe", MISSING, "--checkpoint", "x"], 1, "missing.wav"),
        (moshi_main, ["echo-cancel", MISSING, MISSING, "o.wav"], 1, "missing.wav"),
        (moshi_main, ["speak", "--text-file", "/nonexistent/t.txt", "o.wav"], 1, "t.txt"),
        (moshi_main, ["run", "a.wav", "o.wav", "--bogus"], 2, "`moshi-mlx run --help`"),
        (moshi_main, ["models", "--bogus"], 2, "`moshi-mlx models --help`"),
        (moshi_main, ["transcribe", "--bogus"], 2, "`moshi-mlx transcribe --help`"),
        (moshi_main, ["speak", "Hi.", "--text-file", "t.txt", "o.wav"], 2, "exclude each other"),
        (moshi_main, ["speak", "Hi.", "o.wav", "extra"], 2, "unrecognized arguments: extra"),
        (quantize_main, ["src", "out", "--recipe", "q3x"], 2, "q3x"),
        (quantize_main, ["voices", "/nonexistent/v.tgz", "out"], 1, "v.tgz"),
        (quantize_main, ["voices", "a", "b", "--bogus"], 2, "voices --help"),
    ],
)
def test_one_exit_code_rule_for_every_tool(capsys, main, argv, code, fragment):
    status, _, err = call(main, capsys, *argv)
    assert status == code and fragment in err and err.count("\n") == 1, err


def test_a_guidance_value_the_model_lacks_is_a_usage_error(capsys, tts, tmp_path):
    status, _, err = call(moshi_main, capsys, "speak", "Hi.", tmp_path / "o.wav", "--checkpoint",
                          tts, "--cfg", "2.3")  # fmt: skip
    assert status == 2 and "--cfg 2.3" in err and not (tmp_path / "o.wav").exists()


def test_every_tool_has_version(capsys):
    from mimi_mlx import __version__

    for main, name in ((mimi_main, "mimi-mlx"), (moshi_main, "moshi-mlx"),
                       (quantize_main, "moshi-mlx-quantize")):  # fmt: skip
        status, out, _ = call(main, capsys, "--version")
        assert status == 0 and out.strip() == f"{name} {__version__}"


def test_num_codebooks_is_the_name_and_num_quantizers_an_alias():
    parser = mimi_parser()
    for flag in ("--num-codebooks", "--num-quantizers", "-n"):
        assert (
            parser.parse_args(["encode", "a.wav", "b.safetensors", flag, "4"]).num_quantizers == 4
        )
    assert "--num-codebooks" in parser._subparsers._group_actions[0].choices["decode"].format_help()


# -- --model for transcribe and speak, with --precision -------------------------------------------
def test_transcribe_and_speak_take_a_known_model(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    wav = make_speech(tmp_path / "a.wav", "Hi.")
    r = cli("transcribe", wav, "--model", "stt-2.6b-en", "--precision", "bf16", env=env)
    assert r.returncode == 1 and "kyutai/stt-2.6b-en-mlx" in r.stderr, r.stderr
    r = cli("speak", "Hi.", tmp_path / "o.wav", "--model", "tts-1.6b-en_fr", env=env)
    assert r.returncode == 1 and "kyutai/tts-1.6b-en_fr" in r.stderr, r.stderr
    r = cli("speak", "Hi.", tmp_path / "o.wav", "--model", "tts-1.6b-en_fr", "--precision", "q4")
    assert r.returncode == 2 and "no q4 repo" in r.stderr
    r = cli("transcribe", wav, "--model", "tts-1.6b-en_fr")
    assert r.returncode == 2 and "moshi-mlx speak --model tts-1.6b-en_fr" in r.stderr, r.stderr


# -- speak: the folder's voices, --list-voices, its JSON -------------------------------------------
def test_speak_uses_the_checkpoint_folders_voice_and_lists_voices(capsys, tts, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tts.parent)
    status, _, err = call(moshi_main, capsys, "speak", "Hi there.", tmp_path / "o.wav",
                          "--checkpoint", tts.name, "--json", tmp_path / "o.json", "-q",
                          "--seed", "1")  # fmt: skip
    assert status == 0, err
    data = json.loads((tmp_path / "o.json").read_text())
    assert data["voices"] == ["tiny"] and data["checkpoint"] == str(tts)  # absolute
    assert " 1 words" not in err
    status, out, _ = call(moshi_main, capsys, "speak", "--list-voices", "--checkpoint", tts)
    assert status == 0 and "tiny, tiny2" in out


# -- smaller things ----------------------------------------------------------------------------
def test_quantizing_the_tiny_tts_warns_once_per_reason(tts, tmp_path):
    from quantize import convert

    result = convert(tts, tmp_path / "q4", "q4", progress=False)
    leaf = [w for w in result.warnings if "not a leaf" in w]
    assert len(leaf) <= 1, result.warnings


def test_the_portaudio_error_says_it_once(monkeypatch):
    import builtins

    from moshi_mlx.live import devices

    real = builtins.__import__

    def fake(name, *a, **kw):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    with pytest.raises(devices.AudioDeviceError) as e:
        devices.load_sounddevice()
    assert str(e.value).lower().count("not found") == 1, e.value


def test_help_texts_a_new_user_reads(capsys):
    from mimi_mlx.io.cli_support import BLAS_HINT
    from quantize.convert_voices import TORCH_INSTALL

    assert "20-30x" in BLAS_HINT and "20-30x" in (REPO / "README.md").read_text()
    assert "download.pytorch.org/whl/cpu" in TORCH_INSTALL
    _, top, _ = call(moshi_main, capsys, "--help")
    assert "Or `--local-dir DIR`" not in top and "hf download REPO --local-dir DIR" in top
    for sub in ("run", "echo-cancel"):
        _, out, _ = call(moshi_main, capsys, sub, "--help")
        assert "chat --list-devices" not in out and "Exit status" in out  # not chat's examples
    _, out, _ = call(quantize_main, capsys, "--help")
    assert "moshi-mlx-quantize voices" in out


def test_the_readme_a_new_user_follows():
    readme = (REPO / "README.md").read_text()
    assert "huggingface-cli" not in readme and "hf auth login" in readme
    assert readme.index("without downloading anything") < readme.index("| ")  # before tables


def test_the_tools_run_as_installed_commands():
    r = subprocess.run(
        [sys.executable, "-m", "mimi_mlx.cli", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.startswith("mimi-mlx ")


def test_hibiki_run_says_what_ended_it(capsys, speech_wav, tmp_path):
    from moshi_mlx.testing.tiny import make_tiny_checkpoint

    hibiki = make_tiny_checkpoint(tmp_path / "hibiki", kind="hibiki")
    status, _, err = call(moshi_main, capsys, "run", speech_wav, tmp_path / "o.wav",
                          "--checkpoint", hibiki, "--max-tail", "0.5", "-q")  # fmt: skip
    assert status == 0, err
    assert "stopped at the model's end of text" in err or "stopped at --max-tail 0.5 s" in err


def test_quantizing_personaplex_converts_its_voices_tgz(tmp_path):
    import tarfile

    torch = pytest.importorskip("torch")
    from moshi_mlx.testing.tiny import make_tiny_checkpoint
    from quantize import convert

    src = make_tiny_checkpoint(tmp_path / "pp", kind="personaplex")
    shutil.rmtree(src / "voices", ignore_errors=True)  # as NVIDIA's repo: only the archive
    pt = tmp_path / "pt" / "voices"
    pt.mkdir(parents=True)
    torch.save({"embeddings": torch.zeros(6, 1, 1, 64), "cache": torch.zeros(1, 17, 4)},
               pt / "NATF1.pt")  # fmt: skip
    with tarfile.open(src / "voices.tgz", "w:gz") as tar:
        tar.add(pt, arcname="voices")
    convert(src, tmp_path / "q8", "q8", progress=False)
    assert [p.name for p in (tmp_path / "q8" / "voices").iterdir()] == ["NATF1.safetensors"]


def test_words_reach_a_caller_as_they_are_recognised(stt, two_files):
    from moshi_mlx.jobs.transcribe import transcribe_files
    from moshi_mlx.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(str(stt))
    seen: dict = {}
    results = transcribe_files(
        ckpt.lm, ckpt.mimi, ckpt.tokenizer, two_files, batch_size=2,
        on_words=lambda path, words: seen.setdefault(path, []).extend(words),
    )  # fmt: skip
    for r in results:
        assert [w.text for w in seen.get(r.path, [])] == [w.text for w in r.words]


def test_on_a_terminal_one_files_words_are_printed_as_they_come(stt, two_files):
    import pty

    master, slave = pty.openpty()
    r = subprocess.run(
        [sys.executable, "-m", "moshi_mlx", "transcribe", str(two_files[0]), "--checkpoint",
         str(stt), "--format", "txt"],
        stdout=slave, stderr=subprocess.PIPE, cwd=REPO, timeout=120,
    )  # fmt: skip
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert r.returncode == 0, r.stderr
    text = out.decode().replace("\r", "")
    with_file = subprocess.run(
        [sys.executable, "-m", "moshi_mlx", "transcribe", str(two_files[0]), "--checkpoint",
         str(stt), "--format", "json", "-q"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    words = [w["word"] for w in json.loads(with_file.stdout)["words"]]
    assert text.split() == words and text.endswith("\n")
