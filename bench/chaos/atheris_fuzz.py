"""Coverage-guided fuzzing (atheris/libFuzzer) of what parses untrusted text: the policy
loader, durations and sizes, Cache-Control and friends, request paths and queries, and
stored envelopes. Any exception other than each parser's documented clean error is a
crash that libFuzzer reports with the input that caused it.

atheris is not a project dependency; run it from its own venv:

    python3.11 -m venv /tmp/fuzzenv
    /tmp/fuzzenv/bin/pip install atheris pyyaml pydantic msgpack
    PYTHONPATH=. /tmp/fuzzenv/bin/python bench/chaos/atheris_fuzz.py -max_total_time=300

(``-atheris_runs=N`` or any libFuzzer flag works too; a corpus directory may follow.)
"""

from __future__ import annotations

import contextlib
import sys

import atheris  # type: ignore[import-not-found]

with atheris.instrument_imports():
    from proxy import units
    from proxy.core import cachecontrol, keys
    from proxy.core.entry import EntryError, decode
    from proxy.errors import PolicyError
    from proxy.policy.load import KeySpec, QueryExclude, parse_policy

SPECS = (KeySpec(), KeySpec(query=["a"]), KeySpec(query=QueryExclude(exclude=["utm"])))


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    target = fdp.ConsumeIntInRange(0, 4)
    if target == 4:
        with contextlib.suppress(EntryError):
            decode(fdp.ConsumeBytes(4096))
        return
    text = fdp.ConsumeUnicodeNoSurrogates(4096)
    if target == 0:
        try:
            parse_policy(text, "fuzz.yaml")
        except PolicyError as exc:
            if not exc.issues:
                raise AssertionError("a PolicyError without issues") from exc
    elif target == 1:
        for parse in (units.parse_duration, units.parse_size):
            with contextlib.suppress(ValueError):
                parse(text)
    elif target == 2:
        values = text.split("\n")
        cachecontrol.parse_cache_control(values)
        cachecontrol.parse_targeted(values)
        cachecontrol.parse_age(values)
        cachecontrol.parse_http_date(text)
        cachecontrol.parse_entity_tags(text)
        cachecontrol.parse_vary(values)
        cachecontrol.normalize_accept_encoding(text)
    else:
        path, _, query = text.partition("?")
        try:
            normal = keys.normalize_path("/" + path)
        except ValueError:
            normal = "/"
        assert keys.normalize_path(normal) == normal
        for spec in SPECS:
            keys.derive_key("r", "h", normal, query, spec, {"cookie": query})


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
