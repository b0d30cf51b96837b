"""`python -m s5_hf.rs4p ...`: the RS4P selection command line."""

import sys

from .cli import main

sys.exit(main())
