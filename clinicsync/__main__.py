import sys

from clinicsync.cli import main

sys.exit(main())
