import sys

from server.cli import main

if __name__ == "__main__":  # also keeps multiprocessing's spawned children from running a server
    sys.exit(main())
