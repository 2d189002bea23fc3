"""A local stand-in for the OpenAI Responses API, clearly labelled, not a real model.

Three modules, one role each:

* ``server``: the HTTP server speaking the Responses API wire format, with faults,
  latency and simulated prompt caching (``Standin``, ``StandinConfig``, ``serve_forever``);
* ``limits``: the RPM/TPM sliding windows and the ``x-ratelimit-*`` headers;
* ``report``: the synthetic, grounded report built from the transcript.

The command line is ``parecer standin`` (``parecer.cli``).
"""

from .report import build_report, parse_transcript
from .server import (
    FAULT_HEADER,
    FAULT_KINDS,
    STANDIN_MODEL,
    Standin,
    StandinConfig,
    serve_forever,
)

__all__ = [
    "FAULT_HEADER",
    "FAULT_KINDS",
    "STANDIN_MODEL",
    "Standin",
    "StandinConfig",
    "build_report",
    "parse_transcript",
    "serve_forever",
]
