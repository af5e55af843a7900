import sys

from nachos.cli import main

sys.exit(main())
