# The signal handlers first (interrupt.py imports only errors.py): a SIGTERM that arrives
# while click and the commands are being imported still ends in exit 128+N.
import sys

from archive_tool.errors import Interrupted
from archive_tool.guard import interrupt

interrupt.install()
try:
    from archive_tool.cli.app import main
except Interrupted as e:
    sys.stderr.write(f"Error: {e}; temp files removed\n")
    sys.exit(e.exit_code)

main()
