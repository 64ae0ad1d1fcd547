"""Audio devices through PortAudio (sounddevice): loading the library, listing the devices,
choosing one and how to open it (mono, 24 kHz when supported, else the device's own rate).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE


class AudioDeviceError(RuntimeError):
    """No usable audio device or audio library. The message says what to do."""


def load_sounddevice():
    """Import sounddevice, turning a missing PortAudio into a message that says what to install."""
    try:
        import sounddevice
    except OSError as e:  # the wheel for Linux carries no PortAudio
        if sys.platform.startswith("linux"):
            hint = (
                "install it with `sudo apt-get install libportaudio2` (Debian, Ubuntu; "
                "`sudo dnf install portaudio` on Fedora)"
            )
        else:
            hint = "reinstall sounddevice (`pip install --force-reinstall sounddevice`)"
        said = " ".join(str(e).split())
        detail = "" if "portaudio library not found" in said.lower() else f" ({said})"
        raise AudioDeviceError(f"the PortAudio library was not found{detail}: {hint}") from e
    return sounddevice


@dataclass(frozen=True)
class DeviceChoice:
    """A device and how to open it."""

    index: int
    name: str
    kind: str  # "input" or "output"
    rate: int  # the stream's sample rate
    channels: int

    @property
    def blocksize(self) -> int:
        """Device samples per 80 ms frame."""
        return round(FRAME_SIZE * self.rate / SAMPLE_RATE)

    @property
    def resampled(self) -> bool:
        return self.rate != SAMPLE_RATE


def list_devices() -> str:
    """A table of the audio devices: index, name, channels, default rate, 24 kHz support."""
    sd = load_sounddevice()
    devices = sd.query_devices()
    if not len(devices):
        return "no audio devices found"
    default_in, default_out = sd.default.device
    rows = []
    for d in devices:
        kinds = []
        if d["max_input_channels"] > 0:
            kinds.append(f"{d['max_input_channels']} in")
        if d["max_output_channels"] > 0:
            kinds.append(f"{d['max_output_channels']} out")
        marks = ("<" if d["index"] == default_in else " ") + (
            ">" if d["index"] == default_out else " "
        )
        rate = "24 kHz ok" if _supports(sd, d, SAMPLE_RATE) else "resampled"
        rows.append(
            f"{marks} {d['index']:3d}  {d['name']}  ({', '.join(kinds)}; "
            f"{d['default_samplerate']:g} Hz default; {rate})"
        )
    return "\n".join(rows + ["< default input, > default output"])


def choose_device(spec: str | int | None, kind: str, rate: int | None = None) -> DeviceChoice:
    """Pick the input or output device to use and how to open it.

    Args:
        spec: device index, or a case-insensitive part of its name (None: the default device).
        kind: "input" or "output".
        rate: open the device at this rate (default: 24 kHz when it supports it, else its own
            default rate; audio is resampled with soxr).

    Raises:
        AudioDeviceError: no such device, or none at all.
    """
    sd = load_sounddevice()
    key = f"max_{kind}_channels"
    devices = [d for d in sd.query_devices() if d[key] > 0]
    if not devices:
        raise AudioDeviceError(
            f"no audio {kind} device found: connect a "
            f"{'microphone' if kind == 'input' else 'speaker'} "
            "(`moshi-mlx chat --list-devices` lists what PortAudio sees)"
        )
    device = _match(sd, devices, spec, kind)
    channels = 1
    if not _supports(sd, device, rate or int(device["default_samplerate"]), 1, kind):
        channels = min(2, device[key])  # a device without a mono mode
    if rate is None:
        rate = SAMPLE_RATE
        if not _supports(sd, device, SAMPLE_RATE, channels, kind):
            rate = int(device["default_samplerate"])
    if not _supports(sd, device, rate, channels, kind):
        raise AudioDeviceError(
            f"the {kind} device {device['name']!r} cannot be opened at {rate} Hz"
        )
    return DeviceChoice(device["index"], device["name"], kind, rate, channels)


def _match(sd, devices: list, spec, kind: str) -> dict:
    if spec is None or spec == "":
        index = sd.default.device[0 if kind == "input" else 1]
        for d in devices:
            if d["index"] == index:
                return d
        return devices[0]
    text = str(spec).strip()
    if text.isdigit():
        for d in devices:
            if d["index"] == int(text):
                return d
    else:
        found = [d for d in devices if text.lower() in d["name"].lower()]
        if len(found) == 1 or (found and found[0]["name"].lower() == text.lower()):
            return found[0]
        if len(found) > 1:
            names = ", ".join(f"{d['index']}: {d['name']}" for d in found)
            raise AudioDeviceError(f"{text!r} matches several {kind} devices ({names}): be precise")
    raise AudioDeviceError(
        f"no {kind} device matches {text!r} (`moshi-mlx chat --list-devices` lists them)"
    )


def _supports(sd, device: dict, rate: int, channels: int = 1, kind: str | None = None) -> bool:
    kinds = [kind] if kind else [k for k in ("input", "output") if device[f"max_{k}_channels"] > 0]
    for k in kinds:
        check = sd.check_input_settings if k == "input" else sd.check_output_settings
        try:
            check(device=device["index"], samplerate=rate, channels=channels, dtype="float32")
        except Exception:
            return False
    return True
