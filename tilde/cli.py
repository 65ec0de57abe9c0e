"""The one ``tilde`` command. Each subcommand lives in ``tilde/commands/<name>.py`` with
``add_arguments(parser)`` and ``main(args) -> int``; heavy imports happen inside ``main``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from tilde import __version__

# name -> (module, one-line help). Adding a subcommand is one line here plus its module.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("tilde.commands.demo", "the pipeline end to end on a bundled corpus with the embedded default model"),
    "index": ("tilde.commands.index", "encode a collection into a TILDEv2 index (also: index merge | verify | info)"),
    "index-merge": ("tilde.commands.index_merge", "merge shard indexes built with --shard i/n"),
    "index-verify": ("tilde.commands.index_verify", "full consistency scan of an index"),
    "index-info": ("tilde.commands.index_info", "print an index's manifest and statistics"),
    "rerank": ("tilde.commands.rerank", "re-rank a first-stage run file with an index"),
    "expand": ("tilde.commands.expand", "expand passages with TILDE (v1) or an MLM expander (also: --concat shards)"),
    "build": ("tilde.commands.build", "the whole offline job: expand, then index (resumable)"),
    "serve": ("tilde.commands.serve", "serve the REST re-ranking API (gunicorn; JSON and msgpack)"),
    "train": ("tilde.commands.train", "train a TILDEv2 model: supervised, distill (SPLADE teacher), tokens, prepare"),
    "bm25": ("tilde.commands.bm25", "BM25 first stage: bm25 index | bm25 search (embedded, or Lucene via Anserini)"),
    "export": ("tilde.commands.export", "export anserini | opensearch; export search (the impact first stage)"),
}

# `tilde index merge ...` reads better than `tilde index-merge ...`; both work.
_NESTED = {("index", "merge"): "index-merge", ("index", "verify"): "index-verify", ("index", "info"): "index-info"}


class CommandError(Exception):
    """An error a command reports as one line, with exit status 2 (no traceback)."""


# Top-level modules of the optional dependencies -> the extra that installs them.
EXTRAS = {
    "torch": "index", "transformers": "index", "safetensors": "index", "tqdm": "index",
    "huggingface_hub": "index",
    "flask": "service", "gunicorn": "service", "msgpack": "service", "prometheus_client": "service",
    "Stemmer": "service",
    "ir_measures": "eval", "bm25s": "eval", "matplotlib": "eval",
}


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """One line naming the extra to install for a missing optional dependency (None: not one)."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return (f"this command needs the optional dependency {top!r} (the [{extra}] extra): "
            f"pip install 'tilde[{extra}]' (or 'tilde[all]'), then re-run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tilde", description="TILDEv2 passage re-ranking on CPUs")
    parser.add_argument("--version", action="version", version=f"tilde {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if len(args_list) >= 2 and (args_list[0], args_list[1]) in _NESTED:
        args_list = [_NESTED[(args_list[0], args_list[1])], *args_list[2:]]
    args = build_parser().parse_args(args_list)
    # The CLI is an application, so it (unlike the library) may configure logging.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(args._module)
    try:
        return int(module.main(args) or 0)
    except ModuleNotFoundError as exc:
        hint = missing_extra_message(exc)
        if hint is None or args.verbose:
            raise
        print(f"tilde {args.command}: error: {hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tilde: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, KeyError, FileNotFoundError, OSError) as exc:
        if args.verbose:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"tilde {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    # `python -m tilde.cli` runs this file as __main__, while commands raise tilde.cli.CommandError:
    # run the main of the imported tilde.cli, whose except clause knows that class.
    from tilde.cli import main as _main

    sys.exit(_main())
