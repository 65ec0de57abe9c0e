"""Property-based API fuzzing from the server's own /openapi.json (schemathesis) against a real
`tilde serve` with a model and a BM25 index: for every operation, bodies that fit the schema and
bodies that do not (JSON and msgpack), and every answer must be no 500, a status the spec
declares, a declared content type, and a body matching the spec's schema. Bounded: 30 examples
per operation (20 that break the schema), a fixed seed (derandomized), no shrinking: well under a minute on 2 cores."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from server_process import build_served_index, serving

schemathesis = pytest.importorskip("schemathesis")  # a dev dependency: installed in CI
pytest.importorskip("torch")
pytest.importorskip("transformers")

import msgpack  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

PASSAGES = {"1": "the apple tree is green", "2": "a sweet red cherry", "3": "how to rank passages fast on a cpu"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 20}  # per operation


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: Any, value: Any) -> dict[str, Any]:
    try:
        return {"data": msgpack.packb(value, use_bin_type=True)}
    except (TypeError, ValueError, OverflowError):  # a value msgpack cannot carry (an int over 64 bits)
        return {"data": msgpack.packb(str(value))}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    index, model = build_served_index(tmp_path_factory.mktemp("fuzz"), PASSAGES, bm25=True)
    # missing zero: random ids are answered (score 0) instead of all being 422 unknown_ids
    with serving("--index", str(index), "--model", str(model), "--missing", "zero", "--workers", "2",
                 "--max-queue", "64") as base:
        yield base


def _operations(url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_answers_by_its_spec(url: str, mode: GenerationMode) -> None:
    operations = _operations(url)
    assert {op.path for op in operations} >= {"/v1/rerank", "/v2/rerank", "/rerank", "/v1/rerank/batch", "/v1/search"}
    for op in operations:
        if mode == GenerationMode.NEGATIVE and op.method.upper() == "GET":
            continue  # no parameters and no body: nothing to break

        @settings(max_examples=EXAMPLES[mode], derandomize=True, database=None, deadline=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            case.call_and_validate(base_url=url, checks=CHECKS, timeout=30)

        check()
