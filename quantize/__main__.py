"""`python -m quantize`: the same as `moshi-mlx-quantize`."""

import sys

from .cli import main

sys.exit(main())
