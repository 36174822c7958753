"""python -m medic"""
import sys

from medic.cli.main import main

sys.exit(main())
