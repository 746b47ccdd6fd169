"""What the test suite shares: one package, imported one way, ``from support.X import …``.

``tests/`` is on ``sys.path`` because pytest puts it there: ``tests/`` has no
``__init__.py``, so pytest's default (prepend) import mode inserts it to import
``tests/conftest.py`` and the top-level test files. The benchmarks that reuse test code
(bench/kill_bench.py, bench/first_backfill_bench.py) insert it themselves.

- ``support.cli``: running the real CLI (a subprocess, a forked child, gated parallel
  processes, `mirror browse`, on a pseudo-terminal) and checking a one-line failure;
- ``support.sim``: the simulated API as tests use it: the environment that points `mirror`
  at it, static worlds, the readings of the API, what a complete mirror must hold,
  hand-made requests and a reference model for the simulator's own tests;
- ``support.compare``: reading a mirror without mirror's code (SQLite or PostgreSQL) and
  the one check that the mirror equals the server, plus the consistency checks;
- ``support.rows``: made-up rows written through the real write path, for query tests;
- ``support.pg``: the PostgreSQL test server (reaching or starting it, fresh databases);
- ``support.proxy``: a real forward proxy on loopback (tinyproxy), with its log;
- ``support.spec``: checking requests and answers against fal's OpenAPI description;
- ``support.figures``: the counts the reliability suite reports at the end of a session.

As in ``mirror/``, a leading underscore means "this module only": no test imports one.
"""
