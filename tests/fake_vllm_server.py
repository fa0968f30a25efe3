"""A stand-in for vLLM's server in registry tests: a real process whose command line names vLLM's server
module and its port (so the registry's checks accept it), answering /health after a start-up delay.
The registry starts, signals and stops it exactly as it would vLLM's, in a fraction of a second."""

from __future__ import annotations

import sys
from pathlib import Path

from flowperf.config import EngineConfig
from flowperf.engines.server import SERVER_MODULE

START_DELAY_S = 1.0

SERVE = """
import http.server, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
time.sleep(float(sys.argv[sys.argv.index("--delay") + 1]))
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def fake_arguments(settings: EngineConfig, model_path: Path, port: int, on_gpu: bool) -> list[str]:
    """`server_arguments`' stand-in: what defines the engine still decides the command line."""
    return [
        sys.executable, "-c", SERVE, SERVER_MODULE, "--port", str(port),
        "--max-model-len", str(settings.max_model_len), "--model", str(model_path),
        "--delay", str(START_DELAY_S),
    ]  # fmt: skip
