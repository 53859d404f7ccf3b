import sys

from busi.cli import main

sys.exit(main())
