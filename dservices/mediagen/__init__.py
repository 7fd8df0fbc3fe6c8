"""The ``mediagen`` DService (the white paper's Appendix A): runs MediaScript image pipelines
named by MRLs such as ``/mgen/io?script=<URL>&args="<URL>",128``.

Modules: :mod:`.mrl` (request -> job), :mod:`.worker` (processes that run jobs),
:mod:`.job` (one run), :mod:`.parser` and :mod:`.interpreter` (MediaScript), :mod:`.ops` and
:mod:`.media` (Pillow), :mod:`.fetch` and :mod:`.policy` (safe HTTP). docs/mediagen.md and
docs/mediascript.md document the service and the language.

Run: ``CGN_LISTEN=127.0.0.1:8000 python -m dservices.mediagen``.
"""

from dservices.mediagen.config import MediaGenConfig
from dservices.mediagen.errors import MediaGenError
from dservices.mediagen.interpreter import Interpreter, RunLimits
from dservices.mediagen.parser import parse
from dservices.mediagen.server import make_app, serve

__all__ = [
    "Interpreter",
    "MediaGenConfig",
    "MediaGenError",
    "RunLimits",
    "make_app",
    "parse",
    "serve",
]
