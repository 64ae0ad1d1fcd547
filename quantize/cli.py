"""`moshi-mlx-quantize`: convert a float Moshi checkpoint into a quantized MLX checkpoint, and
report what the quantization gave up.

    moshi-mlx-quantize kyutai/moshiko-pytorch-bf16 moshiko-q4 --recipe q4 --report
    moshi-mlx-quantize report kyutai/moshiko-pytorch-bf16 moshiko-q4 moshiko-q8
    moshi-mlx-quantize voices personaplex/voices.tgz personaplex-q8/voices
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mimi_mlx.io.cli_support import (
    OneLineParser,
    UsageError,
    add_version,
    positive_int,
    quiet_hub_logs,
    refuse_overwriting,
    run_cli,
    seed,
)
from moshi_mlx.commands.options import add_lora_options, lora_of_args

from .recipes import GROUPS, PARTS, RECIPES

DEFAULT_RECIPE = "q4"

RECIPE_HELP = "\n".join(
    [
        "recipes:",
        *(f"  {name:10} {r.description}" for name, r in RECIPES.items()),
        "",
        "A recipe can be amended or written out as part=precision items, comma-separated:",
        "  q4,embeddings=q8,text_head=float      helium=q4,depformer=q8  (parts not named: float)",
        f"parts: {', '.join(PARTS)}; groups: {', '.join(GROUPS)}",
        "precisions: q4 (group 32), q8 (group 64), q<bits>g<group> (bits 2-6 or 8, group "
        "32/64/128), float",
    ]
)


def _lora_options(p: argparse.ArgumentParser) -> None:
    add_lora_options(p.add_argument_group("LoRA fine-tunes (moshi-finetune's adapters)"))


def _report_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("accuracy report")
    g.add_argument("--audio", type=Path, help="report on the Mimi codes of this audio file")
    g.add_argument(
        "--steps", type=positive_int, default=32, help="time steps per input (default 32)"
    )
    g.add_argument(
        "--batch", type=positive_int, default=2, help="random input sequences (default 2)"
    )
    g.add_argument("--seed", type=seed, default=0, help="seed of the random inputs (default 0)")


def configure_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The conversion command's arguments."""
    p = parser or OneLineParser(
        prog="moshi-mlx-quantize",
        description="Quantize a Moshi checkpoint (Kyutai PyTorch, Kyutai MLX bf16 or transformers;"
        " hub repo id or local path) into an MLX checkpoint folder that moshi-mlx loads as is. "
        "`moshi-mlx-quantize report SOURCE QUANTIZED...` compares existing checkpoints; "
        "`moshi-mlx-quantize voices VOICES.TGZ FOLDER` converts PersonaPlex's voice presets "
        "(each has its own --help).",
        epilog=RECIPE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(p)
    p.add_argument("source", help="float checkpoint: hub repo id, folder or .safetensors file")
    p.add_argument("output", type=Path, help="checkpoint folder to create")
    p.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        help=f"q4, q8, q4-mlp, q4-helium or a spec (below); default {DEFAULT_RECIPE}: "
        f"{RECIPES[DEFAULT_RECIPE].description}",
    )
    p.add_argument("--embeddings", metavar="PRECISION", help="override the embeddings' precision")
    p.add_argument("--text-head", metavar="PRECISION", help="override the text head's precision")
    p.add_argument("--force", action="store_true", help="replace an existing output checkpoint")
    p.add_argument("--revision", help="hub revision of the source")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _lora_options(p)
    p.add_argument(
        "--report",
        action="store_true",
        help="then compare the result with the float model, saved as quantization_report.json "
        "(loads the float model: 30 GB in float32 for the 7B on CPU, 15 GB in bf16 on a GPU)",
    )
    _report_options(p)
    return p


def configure_report_parser(parser: argparse.ArgumentParser | None = None):
    """The `report` command's arguments."""
    p = parser or OneLineParser(
        prog="moshi-mlx-quantize report",
        description="Teacher-forced logits of quantized checkpoints against their float source: "
        "KL divergence and top-1 agreement per stream, and per-layer weight error.",
    )
    p.add_argument("source", help="the float checkpoint the others were made from")
    p.add_argument("quantized", nargs="+", type=Path, help="quantized checkpoint folders")
    p.add_argument("--json", type=Path, help="save the report here as JSON")
    _lora_options(p)
    _report_options(p)
    return p


def configure_voices_parser(parser: argparse.ArgumentParser | None = None):
    """The `voices` command's arguments."""
    p = parser or OneLineParser(
        prog="moshi-mlx-quantize voices",
        description="Convert PersonaPlex's voice presets (voices.tgz of PyTorch .pt files) to "
        "safetensors, once: `moshi-mlx --voice-prompt NAME` then reads them without PyTorch. "
        "Put them in a `voices/` folder beside the model (or pass --voice-prompt FILE).",
    )
    p.add_argument("source", type=Path, help="voices.tgz, a folder of .pt files, or one .pt")
    p.add_argument("output", type=Path, help="folder for NAME.safetensors (created)")
    p.add_argument("--force", action="store_true", help="replace existing presets")
    return p


def _voices(args: argparse.Namespace) -> None:
    from .convert_voices import convert_voices

    written = convert_voices(args.source, args.output, force=args.force)
    names = " ".join(p.stem for p in written)
    print(f"wrote {len(written)} voice presets to {args.output}: {names}")


def _recipe_spec(args: argparse.Namespace) -> str:
    spec = args.recipe
    if args.embeddings:
        spec += f",embeddings={args.embeddings}"
    if args.text_head:
        spec += f",text_head={args.text_head}"
    return spec


def _check_report_options(args: argparse.Namespace) -> None:
    """Everything the report needs that can be checked before the (long) conversion."""
    from mimi_mlx.io.audio import audio_info

    if args.audio is not None:
        audio_info(args.audio)  # AudioError: missing, unreadable or empty


def _convert(args: argparse.Namespace) -> None:
    from moshi_mlx.system.memory import format_bytes

    from .convert import REPORT_FILE, convert
    from .recipes import RecipeError, get_recipe
    from .writer import check_output_folder

    quiet_hub_logs()
    try:
        get_recipe(_recipe_spec(args))  # before anything is read
    except RecipeError as e:
        raise UsageError(str(e)) from None
    refuse_overwriting([args.output], [args.source, args.audio])
    check_output_folder(args.output.expanduser(), args.force)
    if args.report:
        _check_report_options(args)
    elif args.audio is not None:
        raise UsageError("--audio is for the accuracy report: add --report")
    lora, lora_scaling = lora_of_args(args)
    result = convert(
        args.source,
        args.output,
        _recipe_spec(args),
        force=args.force,
        revision=args.revision,
        progress=None if not args.quiet else False,
        lora=lora,
        lora_scaling=lora_scaling,
    )
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    n = len(result.plan.layers)
    print(
        f"wrote {result.output} ({result.recipe.name}: {n} layers quantized, "
        f"{format_bytes(result.nbytes)}, {result.seconds:.1f} s)"
    )
    if args.report:
        _report(args, args.source, [result.output], args.output / REPORT_FILE)


def _report(args, source, quantized: list[Path], json_path: Path | None) -> None:
    from .report import accuracy_report

    lora, lora_scaling = lora_of_args(args)
    report = accuracy_report(
        source,
        quantized,
        steps=args.steps,
        batch=args.batch,
        seed=args.seed,
        audio=args.audio,
        lora=lora,
        lora_scaling=lora_scaling,
    )
    if json_path is not None:
        report.save(json_path)  # before printing: a closed pipe must not lose it
    print(report.table())
    if json_path is not None:
        print(f"saved {json_path}")


def _report_command(args: argparse.Namespace) -> None:
    from mimi_mlx.io.output_file import check_output

    quiet_hub_logs()
    _check_report_options(args)
    if args.json is not None:
        check_output(args.json, force=True)  # its folder exists and is writable
    _report(args, args.source, args.quantized, args.json)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `moshi-mlx-quantize` and `python -m quantize`; returns the exit status
    (errors are one `error: ...` line; 2 for a usage error, 130 interrupted, 143 terminated)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # RecipeError, CheckpointError, OutputError, AudioError are ValueErrors
    expected = (ValueError, OSError, NotImplementedError)
    debug = "MOSHI_MLX_QUANTIZE_DEBUG"
    if argv[:1] == ["report"]:
        return run_cli(configure_report_parser(), argv[1:], _report_command, expected, debug)
    if argv[:1] == ["voices"]:
        return run_cli(configure_voices_parser(), argv[1:], _voices, expected, debug)
    return run_cli(configure_parser(), argv, _convert, expected, debug)


if __name__ == "__main__":
    sys.exit(main())
