"""`python -m graphc.fuzz --cases N --seed S --jobs J`: the differential fuzzer's campaign
(graphc/tools/fuzz.py; docs/fuzzing.md). Also `graphc fuzz ...`."""
import sys

from graphc.tools.fuzz import main

if __name__ == "__main__":
    sys.exit(main())
