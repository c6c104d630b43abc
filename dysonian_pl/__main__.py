import sys

from .cli import main

result = main()
sys.exit(result if isinstance(result, int) else 0)
