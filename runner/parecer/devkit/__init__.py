"""The developer kit: what the demo, the tests and the benchmarks run on, and
nothing the product needs in production.

* ``embedded``: a throwaway PostgreSQL (pgserver) when no database URL is given;
* ``standin``: a local OpenAI-compatible stand-in (``parecer standin``);
* ``sample``: deterministic sample chat sessions (``parecer sample load``);
* ``demo``: ``parecer demo``, the whole job in one command;
* ``chaos``: the chaos harness (``tests/test_chaos.py``, ``bench/chaos.py``).
"""
