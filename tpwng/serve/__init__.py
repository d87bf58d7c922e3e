"""`tpwng serve SOURCES.yaml --model M`: many live sources scored by one process.

`config` reads SOURCES.yaml, `sources` decodes each source in its own thread, `service` batches
the CLIP encoder across sources and keeps each source's TCSAL cache, alerts and outputs,
`alerts` POSTs alert events to receivers, `web` serves the live page, `/metrics` and `/health`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

from tpwng.serve.config import ServeConfigError, load_serve_config

__all__ = ["ServeConfigError", "load_serve_config", "run_service"]


def run_service(config_path: Path, model: Path, out: Path, device: str = "auto",
                port: int | None = None, bind: str | None = None,
                notify: Callable[[str], None] = print) -> dict:
    """Serve until every source has ended or SIGINT/SIGTERM arrives; then score what was
    read, write each source's outputs and return the summary (also ``summary.json``)."""
    from tpwng.scoring.scorer import load_scorer
    from tpwng.serve.service import Service
    from tpwng.serve.web import service_server

    config = load_serve_config(config_path)
    scorer = load_scorer(Path(model), device)
    service = Service(config, scorer, Path(out), notify)
    try:
        server = service_server(service, port, bind)
    except OSError as exc:
        raise ServeConfigError(f"{config_path}: cannot serve HTTP on "
                               f"{bind or config.bind}:{config.port if port is None else port} "
                               f"({exc.strerror or exc})") from None
    host, bound = server.server_address[:2]
    web = threading.Thread(target=server.serve_forever, name="tpwng-serve-http", daemon=True)
    caught: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        caught.append(signal.Signals(signum).name)
        service.request_stop(caught[0])

    before = {}
    if threading.current_thread() is threading.main_thread():
        before = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        service.start()
        web.start()
        notify(f"serving {len(config.sources)} source(s); live page http://{host}:{bound}/ "
               f"(/metrics, /health); outputs in {out}/")
        while not service.done.wait(0.2):
            pass
        summary = service.wait()
    finally:
        service.request_stop()
        server.shutdown()
        server.server_close()
        for s, h in before.items():
            signal.signal(s, h)
    how = f"stopped by {caught[0]}" if caught else "every source ended"
    notify(f"{how}; outputs in {out}/ (summary.json)")
    return summary or {}
