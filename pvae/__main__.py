import sys

from pvae.cli.main import main

sys.exit(main())
