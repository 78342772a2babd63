"""`python -m kubectl_grpcprobe` runs the plugin."""

import sys

from .cli import main

sys.exit(main())
