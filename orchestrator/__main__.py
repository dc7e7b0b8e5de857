import sys

from orchestrator.faces.cli.main import main

sys.exit(main())
