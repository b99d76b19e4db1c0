"""Start the app's Streamlit server with its heavy imports warmed in the background.

`pruning-lab app` runs this file with `streamlit run`'s arguments. Streamlit imports a page's
modules only when the first browser connects, so the first student used to wait for torch,
torch's operator registry (a first `FlopCounterMode`, used to count MACs, imports
`torch._dynamo`: seconds), pandas and plotly. Here a thread imports them while the server
starts; a page that needs a module still being imported waits only for the rest of it
(Python's per-module import locks), never imports it twice. Streamlit itself is imported
first, alone (two threads importing pandas at once can see it half initialised). A second
thread then fills the shared caches of every sample model before the students arrive
(`ui.prewarm`: baselines and dense latencies; `PRUNING_LAB_PREWARM=0` turns it off).

What those leave behind (modules, the sample models and their caches: about 290,000 objects)
is then frozen out of Python's cyclic garbage collector (`gc.freeze`). `pruning-lab app`
already turns off Streamlit's forced full collection after every run (`runner.postScriptGC`),
but Python's own full collections still come every few dozen reruns, and each walked every
object: 446 ms holding the GIL (no session's messages sent meanwhile) against 162 ms with the
warm-up's objects frozen (36 Prune-page runs over three sample models, AppTest, loaded 2-core
machine).
"""

from __future__ import annotations

import gc
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
    gc.freeze()  # imported modules live as long as the server: no collection walks them again


def prewarm(after: threading.Thread) -> None:
    """The sample models' baselines and dense latencies (`ui.prewarm`), once `after` (the
    import warm-up) is done and Streamlit's runtime exists: one thread importing at a time
    beside the server's own start, since two threads importing pandas' circular submodules at
    once can see a partially initialised module."""
    after.join()
    from ui.prewarm import warm_when_ready
    from ui.state import DEFAULTS

    warm_when_ready(first=DEFAULTS["model_ref"])
    gc.freeze()  # nor the sample models and caches the warm-up filled


def main() -> None:
    """Import Streamlit, then warm up in daemon threads (imports; the sample models' baselines
    and latencies once the runtime exists), then hand the command line to Streamlit's CLI."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # run as a file: the project's packages must import
    # Streamlit (with plotly and pandas) first, in this thread alone: see `prewarm`.
    from streamlit.web import cli

    imports = threading.Thread(target=warm_up, name="pruning-lab-warm-up", daemon=True)
    imports.start()
    threading.Thread(
        target=prewarm, args=(imports,), name="pruning-lab-prewarm", daemon=True
    ).start()
    sys.argv[0] = "streamlit"
    cli.main()


if __name__ == "__main__":
    main()
