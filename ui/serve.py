"""Start the app's Streamlit server with its heavy imports warmed in the background.

`pruning-lab app` runs this file with `streamlit run`'s arguments. Streamlit imports a page's
modules only when the first browser connects, so the first student used to wait for torch,
torch's operator registry (a first `FlopCounterMode`, used to count MACs, imports
`torch._dynamo`: seconds), pandas and plotly. Here a thread imports them while the server
starts; a page that needs a module still being imported waits only for the rest of it
(Python's per-module import locks), never imports it twice.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def warm_up() -> None:
    """Import what the first page run needs and run one MAC count (no Streamlit calls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import pruning_core.plots
    import pruning_core.prune
    import pruning_core.slider
    import pruning_core.stats  # noqa: F401 (imported for its side effect: loaded once)

    with torch.no_grad(), FlopCounterMode(display=False):
        torch.nn.Linear(2, 2)(torch.zeros(1, 2))


def main() -> None:
    """Warm up in a daemon thread, then hand the command line to Streamlit's CLI."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # run as a file: the project's packages must import
    threading.Thread(target=warm_up, name="pruning-lab-warm-up", daemon=True).start()
    from streamlit.web import cli

    sys.argv[0] = "streamlit"
    cli.main()


if __name__ == "__main__":
    main()
