"""The training loop behind ``tilde train``: seeded, resumable, metered.

Every random choice is a function of ``(seed, step)`` — the data order of each epoch, the
candidates drawn for each group, the dropout masks — so a run resumed from a checkpoint ends
with the same weights as an uninterrupted one (checkpoints hold the optimizer and scheduler
state too).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tilde.metering import Recorder, default_meter
from tilde.model import TildeV2
from tilde.text import TextProcessor
from tilde.train.data import Group, PassageStore, TokenTargets
from tilde.train.losses import group_loss, token_loss
from tilde.train.scoring import exact_match_scores, group_scores

logger = logging.getLogger(__name__)

__all__ = ["MODES", "TrainConfig", "TrainSummary", "train"]

MODES = ("supervised", "distill", "tokens")
CHECKPOINTS = "checkpoints"
STATE = "trainer_state.pt"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "distill"
    loss: str = "margin-mse"  # supervised: always in-batch cross-entropy; distill: margin-mse | kl
    steps: int = 1000
    batch_queries: int = 8  # queries per step (tokens mode: passages per step = batch_queries * group_size)
    group_size: int = 8  # passages per query: supervised 1 positive + n negatives
    lr: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    temperature: float = 1.0
    token_loss_weight: float = 0.0
    seed: int = 42
    save_every: int = 200
    keep_checkpoints: int = 2
    max_grad_norm: float = 1.0
    save_dtype: str = "float32"
    device: str = "cpu"
    # Before step 0, fit tok_proj by ridge regression of the token targets on the base encoder's
    # hidden states over this many passages (0: keep BERT's random init, as the reference does).
    init_tok_proj_passages: int = 0


@dataclass(frozen=True)
class TrainSummary:
    output: Path
    steps: int
    resumed_from: int
    examples: int
    seconds: float
    joules: float
    method: str
    final_loss: float
    losses: tuple[float, ...] = field(repr=False, default=())

    def format(self) -> str:
        rate = self.examples / self.seconds if self.seconds > 0 else 0.0
        return (
            f"trained {self.steps} steps ({self.examples} examples"
            + (f", resumed at step {self.resumed_from}" if self.resumed_from else "")
            + f") into {self.output}: {self.seconds:.1f} s, {rate:.1f} examples/s, final loss {self.final_loss:.4f}, "
            f"{self.joules:.0f} J ({self.method})"
        )


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _order(n: int, seed: int, step: int, per_step: int) -> np.ndarray:
    """Indices used at ``step``: epoch-wise permutations seeded by (seed, epoch)."""
    start = step * per_step
    out: list[int] = []
    while len(out) < per_step:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[offset : offset + per_step - len(out)].tolist())
    return np.asarray(out, dtype=np.int64)


def _pick(group: Group, size: int, rng: np.random.Generator, mode: str) -> tuple[list[str], list[float] | None]:
    """``size`` passages of a group: supervised = one positive + negatives; distill = the
    teacher's best + random others (sampled with replacement only when the list is short)."""
    if mode == "supervised":
        pos = group.pids[int(rng.integers(group.positives))]
        negs = group.pids[group.positives :]
        idx = rng.choice(len(negs), size - 1, replace=len(negs) < size - 1)
        return [pos, *(negs[i] for i in idx)], None
    assert group.scores is not None
    order = np.argsort(-np.asarray(group.scores), kind="stable")
    rest = order[1:]
    idx = rng.choice(len(rest), size - 1, replace=len(rest) < size - 1)
    chosen = [int(order[0]), *(int(rest[i]) for i in idx)]
    return [group.pids[i] for i in chosen], [group.scores[i] for i in chosen]


def _pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def _latest_checkpoint(output: Path) -> Path | None:
    root = output / CHECKPOINTS
    done = sorted((p for p in root.glob("step-*") if (p / STATE).is_file()), key=lambda p: int(p.name[5:]))
    return done[-1] if done else None


def _save_model(model: TildeV2, folder: Path, base: Path, dtype: str, meta: dict[str, Any]) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    to_save = model
    if dtype == "float16":
        import copy

        to_save = copy.deepcopy(model).half()
    to_save.save_pretrained(tmp, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copyfile(base / name, tmp / name)
    (tmp / "training_args.json").write_text(json.dumps(meta, indent=1, default=str), "utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def train(
    config: TrainConfig,
    base: str | os.PathLike[str],
    output: str | os.PathLike[str],
    passages: PassageStore,
    groups: list[Group] | None = None,
    targets: TokenTargets | None = None,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    meta: dict[str, Any] | None = None,
) -> TrainSummary:
    """Train a TILDEv2 model from ``base`` (a plain BERT encoder or a TILDEv2 checkpoint) and save
    it to ``output``. Resumes from ``output/checkpoints`` when present. ``stop_after`` ends the
    run after that many steps in this call (tests, time-boxed jobs); re-run to continue."""
    if config.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {config.mode!r}")
    if config.mode in ("supervised", "distill") and not groups:
        raise ValueError(f"{config.mode} training needs query groups")
    if config.mode == "distill" and any(g.scores is None for g in groups or []):
        raise ValueError("distillation groups need teacher 'scores'")
    if (config.mode == "tokens" or config.token_loss_weight > 0) and targets is None:
        raise ValueError("token-level distillation needs teacher token targets")
    if config.group_size < 2 and config.mode != "tokens":
        raise ValueError("group size must be >= 2")
    base_dir, out = Path(base), Path(output)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device)
    text = TextProcessor.load(base_dir)
    pad_id = text.special_id("[PAD]")
    stop = torch.zeros(text.vocab_size, dtype=torch.bool)
    stop[torch.as_tensor(text.stop_ids, dtype=torch.long)] = True

    _set_seed(config.seed)
    model = _load_start(base_dir)
    model.to(device)  # type: ignore[arg-type]
    if config.init_tok_proj_passages > 0 and _latest_checkpoint(out) is None:
        if targets is None:
            raise ValueError("--init-tok-proj needs token targets")
        fit_tok_proj(model, passages, targets, stop, pad_id, config.init_tok_proj_passages, config.seed)
    model.train()
    no_decay = ("bias", "LayerNorm.weight")
    params = [
        {
            "params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
            "weight_decay": config.weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=config.lr)
    warmup = int(config.steps * config.warmup_ratio)

    def schedule(step: int) -> float:  # linear warm-up, then linear decay (the reference's default)
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (config.steps - step) / max(1, config.steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    start = 0
    ckpt = _latest_checkpoint(out)
    if ckpt is not None:
        state = torch.load(ckpt / STATE, map_location="cpu", weights_only=False)
        if state["config"] != asdict(config):
            raise ValueError(
                f"{ckpt}: checkpoint was written with different settings; use a new --output or the same settings"
            )
        model.load_state_dict(TildeV2.from_pretrained(ckpt).state_dict())
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["step"])
        logger.info("resuming from %s (step %d)", ckpt, start)

    items = [p for p in passages.pids() if targets is not None and p in targets] if config.mode == "tokens" else []
    n_items = len(groups or []) if config.mode != "tokens" else len(items)
    if n_items == 0:
        raise ValueError("nothing to train on")
    per_step = config.batch_queries if config.mode != "tokens" else config.batch_queries * config.group_size
    recorder = Recorder(default_meter(scope="process"), keep=False, use_global_hooks=False)
    joules0, t0 = recorder.meter.read(), time.perf_counter()
    losses: list[float] = []
    from tqdm import tqdm

    bar = tqdm(total=config.steps, initial=start, unit="step", disable=not progress, dynamic_ncols=True)
    step = start
    end = config.steps if stop_after is None else min(config.steps, start + stop_after)
    run_meta = {"config": asdict(config), "base": str(base_dir), **(meta or {})}
    try:
        while step < end:
            rng = np.random.default_rng([config.seed, step, 1])
            torch.manual_seed(config.seed * 1_000_003 + step)  # dropout masks
            picks = _order(n_items, config.seed, step, per_step)
            loss = _step_loss(config, model, picks, rng, groups, items, passages, targets, stop, pad_id, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            if step % config.save_every == 0 or step == end:
                _checkpoint(model, opt, sched, step, config, out, base_dir, run_meta)
    finally:
        bar.close()
    if step >= config.steps:
        _save_model(model, out / "final.tmpdir", base_dir, config.save_dtype, {**run_meta, "steps": step})
        for f in (out / "final.tmpdir").iterdir():
            os.replace(f, out / f.name)
        (out / "final.tmpdir").rmdir()
    seconds = time.perf_counter() - t0
    return TrainSummary(
        output=out,
        steps=step,
        resumed_from=start,
        examples=(step - start) * per_step,
        seconds=seconds,
        joules=recorder.meter.read() - joules0,
        method=recorder.method,
        final_loss=float(np.mean(losses[-20:])) if losses else float("nan"),
        losses=tuple(losses),
    )


@torch.no_grad()
def fit_tok_proj(
    model: TildeV2,
    passages: PassageStore,
    targets: TokenTargets,
    stop: torch.Tensor,
    pad_id: int,
    n_passages: int,
    seed: int,
    ridge: float = 1e-2,
    batch_size: int = 32,
) -> float:
    """Least-squares ``tok_proj`` (weight and bias) mapping the encoder's last hidden states at
    index-kept positions to the teacher's token targets; returns the fit's R^2. A head that starts
    where a linear read-out of the base encoder can get saves many steps of a short CPU run."""
    pids = [p for p in passages.pids() if p in targets]
    rng = np.random.default_rng([seed, 7])
    chosen = [pids[i] for i in rng.permutation(len(pids))[:n_passages]]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hidden = model.config.hidden_size
    gram = torch.zeros((hidden + 1, hidden + 1), dtype=torch.float64)
    rhs = torch.zeros(hidden + 1, dtype=torch.float64)
    ys, yy, count = 0.0, 0.0, 0
    for start in range(0, len(chosen), batch_size):
        batch = chosen[start : start + batch_size]
        rows = [passages[p] for p in batch]
        ids, mask = _pad(rows, pad_id)
        h = model.bert(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.cpu()
        valid = mask.bool() & ~stop[ids]
        tgt = torch.zeros(ids.shape, dtype=torch.float32)
        for r, (pid, row) in enumerate(zip(batch, rows)):
            tgt[r, : len(row)] = torch.as_tensor(targets.targets(pid, row))
        x = torch.cat([h[valid], torch.ones((int(valid.sum()), 1))], dim=1).double()
        y = tgt[valid].double()
        gram += x.T @ x
        rhs += x.T @ y
        ys, yy, count = ys + float(y.sum()), yy + float((y * y).sum()), count + int(y.numel())
    reg = ridge * torch.eye(hidden + 1, dtype=torch.float64) * (gram.diagonal().mean())
    reg[-1, -1] = 0.0
    sol = torch.linalg.solve(gram + reg, rhs)
    model.tok_proj.weight.copy_(sol[:-1].float().view(1, -1).to(device))
    model.tok_proj.bias.copy_(sol[-1:].float().to(device))
    sse = float(yy - 2 * sol @ rhs + sol @ gram @ sol)
    r2 = 1.0 - sse / max(yy - ys * ys / max(count, 1), 1e-12)
    logger.info("tok_proj fitted on %d positions of %d passages: R^2 = %.3f", count, len(chosen), r2)
    model.train(was_training)
    return r2


def _load_start(base: Path) -> TildeV2:
    """A TILDEv2 checkpoint continues training; a plain BERT (or MLM) encoder gets a new tok_proj."""
    from safetensors import safe_open

    files = list(base.glob("*.safetensors"))
    keys: set[str] = set()
    for f in files:
        with safe_open(str(f), "pt") as sf:
            keys.update(sf.keys())
    if "tok_proj.weight" in keys:
        return TildeV2.from_pretrained(base, dtype=torch.float32)
    return TildeV2.from_encoder(base)


def _checkpoint(model, opt, sched, step, config, out, base_dir, meta) -> None:  # type: ignore[no-untyped-def]
    folder = out / CHECKPOINTS / f"step-{step}"
    _save_model(model, folder, base_dir, "float32", {**meta, "steps": step})
    torch.save(
        {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "config": asdict(config)},
        folder / STATE,
    )
    olds = sorted((p for p in (out / CHECKPOINTS).glob("step-*")), key=lambda p: int(p.name[5:]))
    for old in olds[: -config.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def _step_loss(config, model, picks, rng, groups, items, passages, targets, stop, pad_id, device):  # type: ignore[no-untyped-def]
    if config.mode == "tokens":
        pids = [items[i] for i in picks]
        teacher = None
        queries: list[tuple[int, ...]] = []
    else:
        pids, teacher_rows, queries = [], [], []
        for i in picks:
            g = groups[int(i)]
            chosen, scores = _pick(g, config.group_size, rng, config.mode)
            pids.extend(chosen)
            teacher_rows.append(scores)
            queries.append(g.query_ids)
        teacher = torch.tensor(teacher_rows, dtype=torch.float32, device=device) if config.mode == "distill" else None
    rows = [passages[p] for p in pids]
    ids, mask = _pad(rows, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    weights = model(ids, mask)
    valid = mask.bool() & ~stop.to(device)[ids]
    total = torch.zeros((), device=device)
    if config.mode != "tokens":
        q_ids, q_mask = _pad([list(q) for q in queries], pad_id)
        cart = exact_match_scores(weights, ids, valid, q_ids.to(device), q_mask.to(device))
        if config.mode == "supervised":
            total = group_loss(cart, None, config.group_size, "ce", config.temperature)
        else:
            total = group_loss(
                group_scores(cart, config.group_size), teacher, config.group_size, config.loss, config.temperature
            )
    if config.mode == "tokens" or config.token_loss_weight > 0:
        assert targets is not None
        tgt = torch.zeros_like(weights)
        for r, (pid, row) in enumerate(zip(pids, rows)):
            if pid in targets:
                tgt[r, : len(row)] = torch.as_tensor(targets.targets(pid, row))
        tl = token_loss(weights, tgt, valid)
        total = tl if config.mode == "tokens" else total + config.token_loss_weight * tl
    if not math.isfinite(float(total.detach())):
        raise FloatingPointError("training loss is not finite; lower --lr")
    return total
