"""A small client for the tilde service (``tilde serve``): JSON or msgpack, keep-alive, stdlib only
(msgpack is imported only when asked for).

>>> client = Client("http://127.0.0.1:8000")
>>> client.rerank("what is a tilde", ids=[7, 3, 12], top_n=2).results
[Result(index=1, id=3, relevance_score=4.25, document=None), ...]
>>> client.search("what is a tilde", k=100, top_n=10).ids   # first stage + re-ranking
["3", ...]
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BatchItem", "Client", "ClientError", "RerankResponse", "Result"]

DocId = str | int


class ClientError(Exception):
    """The service answered with an error (``status``, ``code``, ``message`` from its error body),
    or could not be reached (``status`` 0, ``code`` "connection_error")."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Result:
    index: int  # position in the request's ids / documents
    id: DocId | None
    relevance_score: float
    document: Mapping[str, Any] | None = None
    first_stage_score: float | None = None  # /v1/search: the candidate's first-stage (BM25 or impact) score


@dataclass(frozen=True)
class RerankResponse:
    id: str  # request id
    results: list[Result]
    meta: Mapping[str, Any]  # timing (ms per stage), energy, missing, encoded

    @property
    def ids(self) -> list[DocId | None]:
        return [r.id for r in self.results]


@dataclass(frozen=True)
class BatchItem:
    index: int
    id: DocId | None
    results: list[Result]
    missing: list[Mapping[str, Any]]
    encoded: list[Mapping[str, Any]]


def _plain(obj: Any) -> Any:
    """JSON/msgpack ``default`` hook: numpy arrays and scalars (ids as ``np.array([4, 5])`` or
    ``np.int64``) as the Python lists and values they hold, without importing numpy here."""
    if type(obj).__module__ == "numpy":
        tolist = getattr(obj, "tolist", None)
        if callable(tolist):
            return tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _id_list(ids: Sequence[DocId] | Any) -> list[Any]:
    """``ids`` as a list; a numpy array becomes the Python values it holds."""
    tolist = getattr(ids, "tolist", None)
    if type(ids).__module__ == "numpy" and callable(tolist):
        out = tolist()
        if not isinstance(out, list):
            raise ValueError("ids must be a sequence of ids, not a single value")
        return out
    return list(ids)


def _body(**fields: Any) -> dict[str, Any]:
    """A request body of the fields given (None: left out, so the server's default applies)."""
    return {k: v for k, v in fields.items() if v is not None}


def _results(rows: Sequence[Mapping[str, Any]]) -> list[Result]:
    return [Result(r["index"], r.get("id"), r["relevance_score"], r.get("document"), r.get("first_stage_score"))
            for r in rows]


class Client:
    """``Client(url, format="json"|"msgpack", api_key=None)``; one keep-alive connection per thread.
    ``api_key`` (default: the ``TILDE_API_KEY`` env var) is sent as ``Authorization: Bearer``."""

    def __init__(self, url: str = "http://127.0.0.1:8000", format: str = "json", timeout: float = 30.0,
                 api_key: str | None = None) -> None:
        if format not in ("json", "msgpack"):
            raise ValueError(f"format must be 'json' or 'msgpack', not {format!r}")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must look like http://host:port, not {url!r}")
        self.url = url
        self.format = format
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._mime = "application/msgpack" if format == "msgpack" else "application/json"
        key = api_key if api_key is not None else os.environ.get("TILDE_API_KEY")
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}
        self._local = threading.local()
        self._pack: Callable[[Any], bytes]
        self._unpack: Callable[[bytes], Any]
        if format == "msgpack":
            import msgpack

            self._pack = lambda obj: msgpack.packb(obj, use_bin_type=True, default=_plain)
            self._unpack = lambda data: msgpack.unpackb(data, raw=False)
        else:
            self._pack = lambda obj: json.dumps(obj, separators=(",", ":"), default=_plain).encode("utf-8")
            self._unpack = lambda data: json.loads(data)

    # -- transport -------------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = self._local.conn = cls(self._host, self._port, timeout=self.timeout)
        return conn  # type: ignore[no-any-return]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any, Mapping[str, str]]:
        """Send one request; returns (status, decoded body, headers). Retries once on a connection the
        server closed while idle."""
        data = None if body is None else self._pack(body)
        headers = {"Accept": self._mime, **self._auth}
        if data is not None:
            headers["Content-Type"] = self._mime
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, self._prefix + path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.close()
                if attempt == 1 or isinstance(exc, TimeoutError):
                    raise ClientError(0, "connection_error", f"{self.url}: {exc}") from exc
        resp_headers = {k.lower(): v for k, v in resp.getheaders()}
        ctype = resp_headers.get("content-type", "")
        if ctype.startswith("text/"):
            decoded: Any = raw.decode("utf-8", "replace")
        elif "msgpack" in ctype:
            import msgpack

            decoded = msgpack.unpackb(raw, raw=False)
        else:
            decoded = json.loads(raw) if raw else None
        if resp.status >= 400:
            err = decoded.get("error", {}) if isinstance(decoded, dict) else {}
            raise ClientError(resp.status, str(err.get("code", "error")), str(err.get("message", decoded)),
                              resp_headers.get("x-request-id"))
        return resp.status, decoded, resp_headers

    # -- API -------------------------------------------------------------------------------------

    def rerank(
        self,
        query: str,
        ids: Sequence[DocId] | Any | None = None,
        documents: Sequence[str | Mapping[str, Any]] | None = None,
        top_n: int | None = None,
        return_documents: bool = False,
        missing: str | None = None,
    ) -> RerankResponse:
        """Re-rank index ``ids`` (fast path) or Cohere-style ``documents`` for ``query``."""
        body = _body(query=query, ids=None if ids is None else _id_list(ids),
                     documents=None if documents is None else list(documents), top_n=top_n,
                     return_documents=return_documents or None, missing=missing)
        _, out, _ = self.request("POST", "/v1/rerank", body)
        return RerankResponse(out["id"], _results(out["results"]), out.get("meta", {}))

    def search(
        self,
        query: str,
        k: int | None = None,
        top_n: int | None = None,
        return_documents: bool = False,
        mode: str | None = None,
    ) -> RerankResponse:
        """First stage + re-ranking in one call (``POST /v1/search``): the server's first stage
        (BM25, or the index's own weights) retrieves ``k`` passages, which are re-ranked; results
        carry ``first_stage_score`` and, with ``return_documents``, the passage text."""
        body = _body(query=query, k=k, top_n=top_n, return_documents=return_documents or None, mode=mode)
        _, out, _ = self.request("POST", "/v1/search", body)
        return RerankResponse(out["id"], _results(out["results"]), out.get("meta", {}))

    def rerank_batch(
        self,
        queries: Sequence[Mapping[str, Any]],
        top_n: int | None = None,
        missing: str | None = None,
    ) -> list[BatchItem]:
        """Many queries in one request; each item ``{"query", "ids"|"documents", "id"?, "top_n"?}``."""
        body = _body(queries=list(queries), top_n=top_n, missing=missing)
        _, out, _ = self.request("POST", "/v1/rerank/batch", body)
        return [BatchItem(r["index"], r.get("id"), _results(r["results"]), r.get("missing", []), r.get("encoded", []))
                for r in out["results"]]

    def health(self) -> bool:
        try:
            return self.request("GET", "/health")[0] == 200
        except ClientError:
            return False

    def ready(self) -> bool:
        try:
            return self.request("GET", "/ready")[0] == 200
        except ClientError:
            return False

    def info(self) -> dict[str, Any]:
        return self.request("GET", "/info")[1]  # type: ignore[no-any-return]

    def metrics(self) -> str:
        return self.request("GET", "/metrics")[1]  # type: ignore[no-any-return]
