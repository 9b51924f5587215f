"""HTTP plumbing of the plugin's routes: the handler decorator (parameter
names checked, JSON or CSV answers, 400 with a reason for a bad request) and
the query-parameter parsers."""

import functools
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, overload

from tensorboard import errors
from tensorboard.backend import http_util
from werkzeug import wrappers
from werkzeug.datastructures import MultiDict

from tb_bnstats.plugin import data

_INT_RE = re.compile(r"^[0-9]{1,15}$")

logger = logging.getLogger("tb_bnstats")

# A request's query parameters (werkzeug's ``request.args``).
Args = MultiDict[str, str]
# What ``format=csv`` downloads: ``() -> (filename, header, rows)``.
CsvSource = Callable[[], tuple[str, Sequence[Any], Iterable[Iterable[Any]]]]
# What a handler answers: the JSON payload and its CSV form (None: the route has none).
Answer = tuple[dict[str, Any], CsvSource | None]
# A handler ``fn(self, request, args) -> (payload, csv)``.
Handler = Callable[[Any, wrappers.Request, Args], Answer]


class BadRequest(Exception):
    """A request the routes refuse with 400 and this message."""


def route(allowed: Iterable[str], csv_ok: bool = False) -> Callable[[Handler], Callable[..., Any]]:
    """Wraps a handler ``fn(self, request, args) -> (payload, csv)``.

    ``allowed`` lists the parameter names the route accepts; ``csv`` is None
    or a function returning ``(filename, header, rows)`` for ``format=csv``
    (called only then).
    """
    allowed = set(allowed) | ({"format"} if csv_ok else set())

    def wrap(fn: Handler) -> Callable[..., Any]:
        # werkzeug types Request.application for a function of the request alone; it calls a method
        # the same way (the request built from the next-to-last argument).
        @wrappers.Request.application  # type: ignore[arg-type]
        @functools.wraps(fn)
        def handler(self: Any, request: wrappers.Request) -> Any:
            try:
                try:
                    args = request.args
                except UnicodeDecodeError:  # raw (not %-encoded) bytes that are not UTF-8
                    raise BadRequest("the query string is not valid UTF-8") from None
                for name in args:
                    if name not in allowed:
                        raise BadRequest(f"unknown parameter {name!r}; this route takes {sorted(allowed)}")
                fmt = one(args, "format", "json") if csv_ok else "json"
                if fmt not in ("json", "csv"):
                    raise BadRequest(f"format must be 'json' or 'csv', got {fmt!r}")
                payload, csv = fn(self, request, args)
                if fmt == "csv":
                    assert csv is not None, f"{fn.__name__} takes format=csv and answers no CSV"
                    filename, header, rows = csv()
                    return http_util.Respond(
                        request, data.csv_text(header, rows), "text/csv",
                        headers=[("Content-Disposition", f'attachment; filename="{filename}"')])
                # Payloads hold no NaN/inf (data.finite_list): plain json.dumps is
                # valid JSON and much faster than Respond's recursive Cleanse.
                body: str | dict[str, Any]
                try:
                    body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
                except ValueError:  # a non-finite number from metadata: let TensorBoard cleanse it
                    body = payload
                return http_util.Respond(request, body, "application/json")
            except BadRequest as exc:
                return http_util.Respond(request, {"error": str(exc)}, "application/json", code=400)
            except errors.PublicError as exc:
                return http_util.Respond(request, {"error": str(exc)}, "application/json", code=exc.http_code)
            except Exception:
                # TensorBoard answers 500 and logs nothing: say which route and why.
                logger.exception("bn_stats: %s failed", request.full_path)
                raise

        return handler

    return wrap


@overload
def one(args: Args, name: str, default: str, multi_ok: bool = False) -> str: ...


@overload
def one(args: Args, name: str, default: None = None, multi_ok: bool = False) -> str | None: ...


def one(args: Args, name: str, default: str | None = None, multi_ok: bool = False) -> str | None:
    """The one value of parameter ``name`` (``default`` when absent).

    Raises:
        BadRequest: given more than once (unless ``multi_ok``).
    """
    values = args.getlist(name)
    if not values:
        return default
    if len(values) > 1 and not multi_ok:
        raise BadRequest(f"parameter {name!r} given {len(values)} times")
    return values[0]


@overload
def int_arg(args: Args, name: str, default: int, lo: int, hi: int) -> int: ...


@overload
def int_arg(args: Args, name: str, default: None, lo: int, hi: int) -> int | None: ...


def int_arg(args: Args, name: str, default: int | None, lo: int, hi: int) -> int | None:
    """Parameter ``name`` as an integer in ``[lo, hi]``.

    Raises:
        BadRequest: not such an integer.
    """
    raw = one(args, name)
    if raw is None:
        return default
    if not _INT_RE.match(raw):
        raise BadRequest(f"{name} must be an integer in [{lo}, {hi}], got {raw!r}")
    value = int(raw)
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be an integer in [{lo}, {hi}], got {value}")
    return value


def safe_name(name: str) -> str:
    """``name`` as a file-name part (download names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "data"
