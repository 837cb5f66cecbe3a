import sys

if __name__ == "__main__":  # multiprocessing's spawned children import this module too:
    from turnout.server.cli import main  # they must neither run a server nor pay for its imports

    sys.exit(main())
