"""``python -m lvm_pyro.cli fit ...``: the same as the ``lvm-pyro`` console script."""

import sys

from . import main

sys.exit(main())
