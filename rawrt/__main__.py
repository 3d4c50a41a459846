"""python -m rawrt"""

import sys

from rawrt.cli import main

sys.exit(main())
