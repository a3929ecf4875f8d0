import sys

from nnunet_kd.cli import main

sys.exit(main())
