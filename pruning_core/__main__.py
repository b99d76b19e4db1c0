from pruning_core.cli import run

run()
