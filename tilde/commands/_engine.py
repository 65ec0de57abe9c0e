"""``--engine local|ray`` and the Ray options, shared by ``tilde build`` and ``tilde index``."""

from __future__ import annotations

import argparse
from typing import Any


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (where the passages are encoded)")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: Ray actors that hold the model (pip install 'tilde[ray]'); "
                        "same output byte for byte, and either resumes the other's unfinished build")
    g.add_argument("--ray-address", default=None,
                   help="a running Ray cluster (ray://host:10001, auto, ...); default: start a local Ray")
    g.add_argument("--ray-actors", type=int, default=None,
                   help="actors holding the model (default: one per CPU, or per GPU share with "
                        "--ray-gpus-per-actor)")
    g.add_argument("--ray-gpus-per-actor", type=float, default=0.0,
                   help="GPUs per actor (e.g. 1, or 0.5 for two actors per GPU); give --device cuda with it")


def engine_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~tilde.index.ray_engine.RayEngine` the options ask for, or None (local)."""
    ray_options = args.ray_address is not None or args.ray_actors is not None or args.ray_gpus_per_actor
    if args.engine != "ray":
        if ray_options:
            raise ValueError("--ray-address / --ray-actors / --ray-gpus-per-actor need --engine ray")
        return None
    import importlib.util

    from tilde.cli import CommandError
    from tilde.index.ray_engine import RayEngine

    if importlib.util.find_spec("ray") is None:
        raise CommandError("--engine ray needs Ray: pip install 'tilde[ray]' (or use the default --engine local)")

    return RayEngine(address=args.ray_address, actors=args.ray_actors, gpus_per_actor=args.ray_gpus_per_actor)
