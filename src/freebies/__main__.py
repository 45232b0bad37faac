"""`python -m freebies ...` (also what torchrun runs: `torchrun ... -m freebies train`)."""

import sys

from freebies.cli import main

sys.exit(main())
