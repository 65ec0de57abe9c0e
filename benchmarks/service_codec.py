"""The service's codec in isolation: decoding + validating a 1,000-candidate /v1/rerank body and
encoding its 1,000 results, each way measured in the same run (median of repeats, µs per call).

    python benchmarks/service_codec.py [--candidates 1000] [--repeat 200] [--index DIR]

Rows: the stdlib JSON parse the service used before msgspec (without its Python validators, so a
lower bound of the old cost) against msgspec's one-pass decode + validation into the request
Struct; results rendered by Python string formatting (the old JSON path) against msgspec
encoding the result Structs; and, for msgpack with integer ids, the numpy record array the
service keeps against msgspec's msgpack encoder. With ``--index`` (e.g. the synthetic index that
benchmarks/service_load.py builds), also the whole WSGI call of ``POST /v1/rerank`` in process
(Flask, no HTTP server or socket: what one request costs a worker besides gunicorn), JSON and msgpack.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from service import schemas  # noqa: E402
from service.schemas import Limits, Ranked, RerankResult  # noqa: E402
from service.wire import JSON, MSGPACK  # noqa: E402


def median_us(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--index", default=None, help="an index whose docids include 0..999999 (service_load.py's)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.candidates
    ids = rng.integers(0, 1_000_000, size=n).tolist()
    body = {"query": "what is the fastest cpu reranker", "ids": ids}
    js, mp = json.dumps(body).encode(), msgpack.packb(body)
    limits = Limits(10_000, 256, 20_000, 2_000)
    ranked = Ranked(rng.permutation(n), np.sort(rng.random(n))[::-1] * 10, [], [], 6)
    order, scores = ranked.order.tolist(), ranked.scores.tolist()

    def old_json() -> bytes:  # the pre-msgspec render: one format string per result
        return ("[" + ",".join(f'{{"index":{i},"id":{ids[i]},"relevance_score":{s!r}}}'
                               for i, s in zip(order, scores)) + "]").encode()

    def msgspec_msgpack() -> bytes:
        return schemas.encode(list(map(RerankResult, order, [ids[i] for i in order], scores)), MSGPACK)

    assert json.loads(old_json()) == json.loads(schemas.render_results(JSON, ranked, ids, None, True))
    assert msgpack.unpackb(msgspec_msgpack()) == msgpack.unpackb(schemas.render_results(MSGPACK, ranked, ids, None,
                                                                                        True))
    rows = [
        ("decode JSON: stdlib json.loads (no validation)", lambda: json.loads(js)),
        ("decode JSON: msgspec into RerankV1Request + checks", lambda: schemas.parse_rerank(js, JSON, limits)),
        ("decode msgpack: msgpack.unpackb (no validation)", lambda: msgpack.unpackb(mp)),
        ("decode msgpack: msgspec + checks", lambda: schemas.parse_rerank(mp, MSGPACK, limits)),
        ("encode JSON results: Python formatting (old)", old_json),
        ("encode JSON results: msgspec Structs (new)", lambda: schemas.render_results(JSON, ranked, ids, None, True)),
        ("encode msgpack results: msgspec Structs", msgspec_msgpack),
        ("encode msgpack results: numpy records (kept)",
         lambda: schemas.render_results(MSGPACK, ranked, ids, None, True)),
    ]
    if args.index:
        rows += [(f"whole WSGI call, {fmt}", _wsgi_call(args.index, data, ctype))
                 for fmt, data, ctype in (("JSON", js, JSON), ("msgpack", mp, MSGPACK))]
    print(f"# {n} candidates by integer ids; median of {args.repeat} calls")
    for name, fn in rows:
        print(f"{name:55s} {median_us(fn, args.repeat):9.1f} us")


def _wsgi_call(index: str, body: bytes, ctype: str) -> Callable[[], object]:
    import io

    from service.app import create_app
    from service.config import ServiceConfig

    app = create_app(ServiceConfig(index=index, meter="cpu"))

    def call() -> bytes:
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/rerank", "SERVER_NAME": "x", "SERVER_PORT": "80",
                   "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "CONTENT_TYPE": ctype,
                   "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr}
        status: list[str] = []
        out = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
        assert status[0].startswith("200"), out[:200]
        return out

    return call


if __name__ == "__main__":
    main()
