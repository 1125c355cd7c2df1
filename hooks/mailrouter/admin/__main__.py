"""``python -m mailrouter.admin``: the admin CLI (used by bin/mailrouter-admin without a venv)."""

import sys

from mailrouter.admin.cli import main

sys.exit(main(sys.argv[1:]))
