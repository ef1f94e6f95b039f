import sys

from llmcourse.cli import main

sys.exit(main())
