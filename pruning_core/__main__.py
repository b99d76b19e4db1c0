from pruning_core.cli import run

__all__: list[str] = []

run()
