# `python -m archive_tool`; cli/start.py installs the signal handlers before the commands load.
from archive_tool.cli.start import main

main()
