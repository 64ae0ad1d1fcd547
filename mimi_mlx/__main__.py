"""`python -m mimi_mlx`: the `mimi-mlx` command line."""

import sys

from .cli import main

sys.exit(main())
