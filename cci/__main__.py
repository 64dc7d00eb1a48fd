"""``python -m cci COMMAND ...`` is ``blockemu-cci COMMAND ...``."""

import sys

from .main import main

sys.exit(main(["blockemu-cci", *sys.argv[1:]]))
