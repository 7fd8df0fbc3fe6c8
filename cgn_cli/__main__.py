"""``python -m cgn_cli`` is ``cgn``."""

from cgn_cli.main import main

main()
