"""`python -m engine eval`: every policy at one budget on the same texts, and the quality of the gists.

For each input text and each policy (scorer) a real session streams the text at the budget
`wc.w_max` (default 1,024 here) and measures the base model's NLL of each next block under the WC
that policy produced (every `nll_every`-th refocus step, `session.nll_every`: the same blocks for
every policy). The recency pass also measures two references on the same blocks: `full` (the whole
history, only for blocks whose history fits the model's trained context) and `window` (a raw window
of the newest `w_max` tokens, the plain truncated-context transformer). Gist quality: on
`gist_samples` windows cut from the same texts, the base model's NLL of the H tokens after a block
when the block is shown as raw tokens, as its GistNet gist, dropped, or as the mean of its token
embeddings (ΔNLL@H = variant minus raw tokens; lower is better).

Results come per document and across documents: each policy's mean and standard deviation over
the documents, and, against the `lensnet` policy, the per-document differences (mean, standard
deviation, on how many documents lensnet is lower), which is what "beats recency" has to mean.

Output (a contract; NLL in nats per token, token-weighted means):
    {"w_max": int, "tokens": int, "policies": {NAME: {"nll": float, ...}},
     "documents": {TEXT: {NAME: {"nll": float, ...}}},
     "across_documents": {NAME: {"mean": float, "std": float, "documents": int}},
     "lensnet_vs": {NAME: {"mean_diff": float, "std_diff": float, "lower_on": int, "documents": int}},
     "gist": {"gist": float, "drop": float, "mean_pool": float, ...}, ...}
The recall scenario (`--scenario passkey`) lives in `studio/eval_scenario.py`. This module does not
train anything and writes no files.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from contract.config import SCORER_NAMES, RunConfig, apply_overrides
from contract.events import RunFinished, StepRecorded
from engine.session import full_context_fits

REFERENCES = ("full", "window")  # rows of the policy table that are not scorers


@dataclass(frozen=True)
class EvalConfig:
    policies: tuple[str, ...] = SCORER_NAMES  # scorers to compare, each at the same budget
    nll_every: int = 1  # measure the next block's NLL at every Nth refocus step (same steps for all)
    gist_samples: int = 64  # windows for the gist-quality numbers (0 = skip them)
    gist_horizon: int = 64  # H of ΔNLL@H
    gist_prefix_blocks: int = 4  # raw blocks before the gisted block
    seed: int = 0  # draws of the gist windows
    baselines: bool = True  # full-context and window references (skip when combining with a run that has them)

    def __post_init__(self) -> None:
        bad = [p for p in self.policies if p not in SCORER_NAMES]
        if not self.policies or bad:
            raise ValueError(f"eval policies must be among {', '.join(SCORER_NAMES)}, got {list(self.policies)}")
        if self.nll_every < 1 or self.gist_samples < 0 or self.gist_horizon < 2 or self.gist_prefix_blocks < 1:
            raise ValueError("eval needs nll_every >= 1, gist_samples >= 0, gist_horizon >= 2, gist_prefix_blocks >= 1")
        if self.seed < 0:
            raise ValueError("eval seed must be >= 0")


def eval_run_config(sets: list[str]) -> RunConfig:
    """The engine config of an evaluation: the defaults with `wc.w_max=1024`, then `--set` overrides."""
    return apply_overrides(RunConfig(), ["wc.w_max=1024", *sets])


class _StepNLL:
    """Sink keeping cursor -> (nll, nll_full, nll_recency) of every measured step, and the token count."""

    def __init__(self):
        self.rows: dict[int, tuple[float | None, float | None, float | None]] = {}
        self.tokens = 0

    def emit(self, e) -> None:
        if isinstance(e, StepRecorded) and e.nll is not None:
            self.rows[e.tokens_seen] = (e.nll, e.nll_full, e.nll_recency)
        elif isinstance(e, RunFinished):
            self.tokens = e.tokens


def _weighted(values: list[tuple[float, int]]) -> float | None:
    w = sum(n for _, n in values)
    return float(sum(v * n for v, n in values) / w) if w else None


def run_policy(engine, cfg: RunConfig, policy: str, texts: list[tuple[str, str]], nll_every: int,
               baselines: bool = False) -> list[tuple[str, int, int, float, float | None, float | None]]:  # fmt: skip
    """Stream every text under one policy; rows (text name, cursor, block tokens, nll, nll_full, nll_window).

    `cfg` must have its position mode resolved (`engine.cfg` is)."""
    pcfg = apply_overrides(cfg, [f"scorer.name={policy}", f"session.baselines={str(baselines).lower()}",
                                 f"session.nll_every={nll_every}"])  # fmt: skip
    scorer = engine.scorer_for(pcfg)
    every = pcfg.session.refocus_every
    out = []
    for name, text in texts:
        sink = _StepNLL()
        engine.session(sink, name, cfg=pcfg, scorer=scorer).run([text])
        for cursor, (nll, full, window) in sorted(sink.rows.items()):
            out.append((name, cursor, min(every, sink.tokens - cursor), nll, full, window))
    return out


def policy_table(rows: dict[str, list], base: list, w_max: int, fits_upto: int = 0) -> dict[str, dict]:
    """Per policy: token-weighted NLL over all measured blocks, over blocks where the budget binds
    (cursor >= w_max), and over the blocks where the full history fits; then the `full` and `window`
    references from `base` (rows of a pass with baselines on). Without baselines (`base` empty) the
    blocks where the full history fits are those ending by `fits_upto` (the session's own rule)."""
    full_keys = {(r[0], r[1]) for r in base if r[4] is not None}
    if not base and fits_upto:
        full_keys = {(r[0], r[1]) for rs in rows.values() for r in rs if r[1] + r[2] <= fits_upto}

    def mean(rs, col, keep=lambda r: True):
        return _weighted([(r[col], r[2]) for r in rs if r[col] is not None and keep(r)])

    bound = lambda r: r[1] >= w_max  # noqa: E731
    fits = lambda r: (r[0], r[1]) in full_keys  # noqa: E731
    out: dict[str, dict] = {}
    for policy, rs in rows.items():
        out[policy] = {"nll": mean(rs, 3), "nll_budget_bound": mean(rs, 3, bound),
                       "nll_where_full_fits": mean(rs, 3, fits), "blocks": len(rs)}  # fmt: skip
    if base and full_keys:
        out["full"] = {"nll": mean(base, 4), "nll_where_full_fits": mean(base, 4), "blocks": len(full_keys)}
    if any(r[5] is not None for r in base):
        out["window"] = {"nll": mean(base, 5), "nll_budget_bound": mean(base, 5, bound),
                         "nll_where_full_fits": mean(base, 5, fits),
                         "blocks": sum(r[5] is not None for r in base)}  # fmt: skip
    rec = out.get("recency", {}).get("nll")
    for row in out.values():
        if rec is not None and row.get("nll") is not None:
            row["delta_vs_recency"] = row["nll"] - rec
    return out


@torch.no_grad()
def gist_quality(model, gistnet, token_docs: list[np.ndarray], cfg: RunConfig, ecfg: EvalConfig) -> dict:
    """ΔNLL@H (vs the raw block) of the gist, of dropping the block and of the mean-pooled embedding.

    LOD1 always; LOD2 (vs its 32 LOD1 gists, the detail a LOD2 gist replaces) under `lod2` when the
    texts are long enough. Empty dict when no text is long enough for one window.
    """
    from studio.train.common import seeded_generator
    from studio.train.gist_task import horizon_logits, sample_windows, token_nll

    bs, mode = cfg.tree.block_size, cfg.wc.position_mode
    gen = seeded_generator(ecfg.seed)
    out: dict = {}
    for level, teacher, variants in ((1, "full", ("gist", "drop", "mean_pool")),
                                     (2, "lod1", ("gist", "drop", "mean_pool"))):  # fmt: skip
        if level > cfg.tree.max_lod:
            break
        sums = dict.fromkeys((teacher, *variants), 0.0)
        done = 0
        try:
            for lo in range(0, ecfg.gist_samples, 16):
                n = min(16, ecfg.gist_samples - lo)
                win = sample_windows(token_docs, n, level=level, n_gisted=1, prefix=ecfg.gist_prefix_blocks * bs,
                                     horizon=ecfg.gist_horizon, block_size=bs, gen=gen)  # fmt: skip
                for v in sums:
                    sums[v] += float(token_nll(horizon_logits(model.model, gistnet, win, v, mode), win.targets).sum())
                done += n
        except ValueError:  # texts too short for a window at this level
            pass
        if not done:
            continue
        per = {v: s / (done * ecfg.gist_horizon) for v, s in sums.items()}
        row = {v: per[v] - per[teacher] for v in variants} | {f"{teacher}_nll": per[teacher], "samples": done,
                                                              "horizon": ecfg.gist_horizon}  # fmt: skip
        if level == 1:
            out.update(row)
        else:
            out["lod2"] = row
    return out


def evaluate(engine, cfg: RunConfig, ecfg: EvalConfig, texts: list[tuple[str, str]], log=None) -> dict:
    """The evaluation JSON (see the module docstring) for `texts` = [(name, text)], with `engine` a
    `runtime.Engine` built with scorer `lensnet` (its model, GistNet and LensNet are reused)."""
    from studio.train.token_docs import tokenize_text

    say = log or (lambda msg: None)
    rows: dict[str, list] = {}
    timings = {}
    # The references ride along with the recency pass (or get a pass of their own without recency).
    ref_policy = "recency" if "recency" in ecfg.policies else None
    for i, policy in enumerate(ecfg.policies):
        t0 = time.perf_counter()
        rows[policy] = run_policy(engine, cfg, policy, texts, ecfg.nll_every, baselines=policy == ref_policy)
        timings[policy] = round(time.perf_counter() - t0, 1)
        say(f"eval: {policy} done ({i + 1}/{len(ecfg.policies)}, {timings[policy]} s)")
    if ref_policy:
        base = rows[ref_policy]
    elif ecfg.baselines:
        base = run_policy(engine, cfg, "recency", texts, ecfg.nll_every, True)
    else:  # no references: the full-history blocks by the session's rule
        base = []
    fits = full_context_fits(engine.model)
    limit = cfg.session.max_tokens
    toks = [tokenize_text(t, engine.model.tokenize) for _, t in texts]
    toks = [t[:limit] if limit else t for t in toks]
    gist = {}
    if ecfg.gist_samples:
        gist = gist_quality(engine.model, engine.gistnet, toks, cfg, ecfg)
        say("eval: gist quality done")
    per_doc = {
        name: policy_table(
            {p: [r for r in rs if r[0] == name] for p, rs in rows.items()},
            [r for r in base if r[0] == name],
            cfg.wc.w_max,
            fits,
        )  # fmt: skip
        for name, _ in texts
    }
    return {
        "w_max": cfg.wc.w_max,
        "tokens": int(sum(len(t) for t in toks)),
        "policies": policy_table(rows, base, cfg.wc.w_max, fits),
        "documents": per_doc,
        **across_documents(per_doc),
        "gist": gist,
        "model": engine.model.model_id,
        "weights": engine.weights,
        "inputs": [name for name, _ in texts],
        "position_mode": cfg.wc.position_mode,
        "eval": dataclasses.asdict(ecfg),
        "seconds": timings,
    }


def across_documents(per_doc: dict[str, dict[str, dict]], key: str = "nll", ref: str = "lensnet") -> dict:
    """Spread over documents: per policy the mean and standard deviation of its per-document `key`;
    against `ref`, the per-document differences ref - other (mean, std, documents where ref is lower).
    Standard deviations are the sample ones (ddof=1; 0 for a single document)."""
    names = sorted({p for rows in per_doc.values() for p in rows})

    def values(p):
        return [rows[p][key] for rows in per_doc.values() if p in rows and rows[p].get(key) is not None]

    def spread(v):
        return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0

    across = {p: {"mean": float(np.mean(v)), "std": spread(v), "documents": len(v)} for p in names if (v := values(p))}
    versus = {}
    for p in names:
        d = [rows[ref][key] - rows[p][key] for rows in per_doc.values()
             if rows.get(ref, {}).get(key) is not None and rows.get(p, {}).get(key) is not None]  # fmt: skip
        if p != ref and d:
            versus[p] = {"mean_diff": float(np.mean(d)), "std_diff": spread(d), "lower_on": int(sum(x < 0 for x in d)),
                         "documents": len(d)}  # fmt: skip
    return {"across_documents": across, "lensnet_vs": versus}


def combine(results: list[dict]) -> dict:
    """One evaluation from several runs over the same texts, budget and NLL steps (e.g. one policy
    re-evaluated after retraining): policies and per-document rows are united (a later run's row
    replaces an earlier one's), the spread over documents is recomputed. ValueError if they differ."""
    if not results:
        raise ValueError("nothing to combine")
    first = results[0]
    for r in results[1:]:
        for key in ("w_max", "tokens", "inputs", "position_mode"):
            if r.get(key) != first.get(key):
                raise ValueError(
                    f"cannot combine evaluations with different {key}: {first.get(key)!r} vs {r.get(key)!r}"
                )
        if r.get("eval", {}).get("nll_every") != first.get("eval", {}).get("nll_every"):
            raise ValueError("cannot combine evaluations measured on different steps (nll_every)")
    out = {k: v for k, v in first.items() if k not in ("policies", "documents", "across_documents", "lensnet_vs")}
    policies: dict = {}
    docs: dict = {}
    for r in results:
        policies.update(r["policies"])
        for name, rows in r.get("documents", {}).items():
            docs.setdefault(name, {}).update(rows)
        if r.get("gist"):
            out["gist"] = r["gist"]
        out["weights"] = {**out.get("weights", {}), **{k: v for k, v in r.get("weights", {}).items() if v}}
        out["seconds"] = {**out.get("seconds", {}), **r.get("seconds", {})}
    rec = policies.get("recency", {}).get("nll")
    for row in policies.values():
        if rec is not None and row.get("nll") is not None:
            row["delta_vs_recency"] = row["nll"] - rec
    return {**out, "policies": policies, "documents": docs, **across_documents(docs)}


def format_table(res: dict) -> str:
    """The human-readable table of an evaluation result (what `engine eval` prints on stderr)."""

    def f(x, signed=False):
        return "-" if x is None else (f"{x:+.4f}" if signed else f"{x:.4f}")

    head = f"{'policy':<12} {'nll':>8} {'nll@bound':>10} {'Δ recency':>10} {'nll@full':>9} {'blocks':>7}"
    lines = [
        f"w_max {res['w_max']}, {res['tokens']} tokens, model {res['model']}, positions {res['position_mode']}",
        head,
    ]
    for name, row in res["policies"].items():
        lines.append(
            f"{name:<12} {f(row.get('nll')):>8} {f(row.get('nll_budget_bound')):>10} "
            f"{f(row.get('delta_vs_recency'), True):>10} {f(row.get('nll_where_full_fits')):>9} {row['blocks']:>7}"
        )
    docs = res.get("documents") or {}
    if len(docs) > 1:
        lines.append(f"per document ({len(docs)}): mean ± std of nll; lensnet - policy: mean ± std, lower on")
        for name, a in res["across_documents"].items():
            v = res["lensnet_vs"].get(name)
            vs = f"   {v['mean_diff']:+.4f} ± {v['std_diff']:.4f}, {v['lower_on']}/{v['documents']}" if v else ""
            lines.append(f"  {name:<12} {a['mean']:.4f} ± {a['std']:.4f}{vs}")
    g = res.get("gist") or {}
    if g:
        lines.append(
            f"gist quality, ΔNLL@{g['horizon']} vs raw tokens ({g['samples']} blocks): gist {f(g['gist'], True)}  "
            f"drop {f(g['drop'], True)}  mean_pool {f(g['mean_pool'], True)}"
        )
        if "lod2" in g:
            h = g["lod2"]
            lines.append(
                f"LOD2 gist, ΔNLL@{h['horizon']} vs its 32 LOD1 gists ({h['samples']}): gist {f(h['gist'], True)}  "
                f"drop {f(h['drop'], True)}  mean_pool {f(h['mean_pool'], True)}"
            )
    return "\n".join(lines)


def read_inputs(paths: list[str]) -> list[tuple[str, str]]:
    """(path, whole text) of each input, with textio's one-line errors for bad files."""
    from engine.textio import read_text

    return [(p, "".join(read_text(p))) for p in paths]


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
