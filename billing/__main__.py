from billing.cli import main
import sys

sys.exit(main())
