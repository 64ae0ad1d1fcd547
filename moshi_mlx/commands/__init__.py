"""The `moshi-mlx` subcommands, one module each: `register(commands)` adds the subparser and
sets its handler; `options` holds what they share (validators, model and sampling options)."""
