import sys

from tpwng.cli import main

sys.exit(main())
