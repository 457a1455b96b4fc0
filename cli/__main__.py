"""``python -m saliency.cli``."""

import sys

from saliency.cli.main import main

sys.exit(main())
