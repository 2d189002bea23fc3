"""parecer: LLM analysis of customer-support chat sessions, natively inside PostgreSQL.

The logic lives in SQL (the ``parecer`` schema, see ``db/``); this package is the
thin part: migrations, the runner, the CLI and the OpenAI-compatible stand-in.
"""

__version__ = "0.1.0"
