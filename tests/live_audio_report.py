"""A pytest plugin (loaded by conftest.py): when the live chat tests were skipped for missing
system packages, say so loudly at the end of the run, so the suite does not pass quietly with
`moshi-mlx chat` untested."""

from __future__ import annotations

MISSING_MARKERS = ("is not installed", "apt-get install")
PACKAGES = "espeak-ng sox libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins"


def missing_package_skips(terminalreporter) -> list[str]:
    """The reasons of the tests skipped because a system package is missing."""
    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else ""
        if any(marker in str(reason) for marker in MISSING_MARKERS):
            reasons.append(str(reason))
    return reasons


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    reasons = missing_package_skips(terminalreporter)
    if not reasons:
        return
    write = terminalreporter.write_line
    terminalreporter.write_sep("!", "LIVE AUDIO NOT TESTED", red=True, bold=True)
    write(f"{len(reasons)} test(s) of the live chat and its devices were SKIPPED: system packages")
    write(f"are missing ({sorted(set(reasons))[0].removeprefix('Skipped: ')}).")
    write(f"Install them (sudo apt-get install {PACKAGES}) or run .ci/run, which does,")
    write("then run the tests again: this run did not test `moshi-mlx chat`.", red=True, bold=True)
    terminalreporter.write_sep("!", red=True, bold=True)
