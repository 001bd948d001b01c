"""The ``bertbeam`` commands' jobs: argv -> a checked, running pipeline and its summary."""
