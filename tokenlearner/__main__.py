import sys

from tokenlearner.cli import main

sys.exit(main())
