"""`python -m engine eval --scenario passkey`: can a policy bring a planted fact back when asked?

For each case of `engine/scenarios.py` and each policy, a session reads the case text (filler with
the fact, then the question) at budget `wc.w_max`; after the last refocus step the base model scores
the answer under the final WC. Per policy: the mean NLL of the answer (nats per token), the share
of cases where greedy decoding would reproduce the whole answer (every answer token the argmax,
teacher-forced), and the share where every block of the fact was at LOD0 when the question came.
References on the same cases: `window` (the raw newest `w_max` tokens), `oracle` (the fact's tokens
followed by the newest `w_max - len(fact)` tokens: what a perfect policy could show at this budget;
if even it does not recover the passkey, the base model cannot copy it from context) and `full`
(the whole text, only where it fits the model's trained context). This module writes no files.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from contract.config import RunConfig, apply_overrides
from engine.scenarios import PasskeyCase, PasskeyConfig, passkey_cases
from studio.train.wc_nll import continuation_scores, wc_scores


class _NullSink:
    def emit(self, e) -> None:  # only the final WC matters here
        pass


def fact_lod(wc, case: PasskeyCase) -> int:
    """Coarsest LOD among the WC entries covering the fact (0 = all raw; -1 = evicted)."""
    if case.fact_start < wc.evicted_upto:
        return -1
    over = (wc.end > case.fact_start) & (wc.start < case.fact_end)
    return int(wc.lod[over].max()) if over.any() else 0  # not covered by entries: it is in the raw tail


def ask(model, sess, case: PasskeyCase) -> dict:
    """After a session has read `case.text`: the answer's NLL under its final WC, whether greedy
    decoding would give the whole answer, and the coarsest LOD of the needle (fact) at that moment."""
    answer = np.asarray(model.tokenize(case.answer), np.int64)
    res = wc_scores(model, sess.tree, [sess.wc], answer, sess.cfg.wc.position_mode)
    lod = fact_lod(sess.wc, case)
    return {"answer_nll": float(res.nll.mean()), "recovered": bool(res.hit.all()), "needle_lod": lod}


@torch.no_grad()
def _raw_score(model, ids: np.ndarray, answer: np.ndarray) -> tuple[float, bool]:
    """Answer NLL and greedy hit after raw tokens `ids` numbered 0.. (a reference, not a policy)."""
    from engine.materialize import Materialized

    x = model.embed(torch.from_numpy(ids.astype(np.int64)))[None]  # [1, n, d]
    pos = torch.arange(ids.shape[0], device=model.device)[None]
    m = Materialized(x, pos, np.zeros(ids.shape[0], np.int64), int(ids.shape[0]), 0)  # all of it "tail"
    res = continuation_scores(model, [m], answer)
    return float(res.nll.mean()), bool(res.hit.all())


def passkey_eval(engine, cfg: RunConfig, policies: tuple[str, ...], pcfg: PasskeyConfig, filler: str,
                 log=None) -> dict:  # fmt: skip
    """The scenario's JSON: per-policy summary and per-case rows. `engine` as for `studio.eval.evaluate`."""
    model = engine.model
    say = log or (lambda msg: None)
    cases = passkey_cases(filler, model.tokenize, model.decode, pcfg)
    base = apply_overrides(cfg, ["session.compute_nll=false", "session.baselines=false", "session.max_tokens=0"])
    rows = [{"length": c.length, "depth": c.depth, "n_tokens": c.n_tokens, "passkey": c.passkey,
             "fact_span": [c.fact_start, c.fact_end], "results": {}} for c in cases]  # fmt: skip
    from studio.train.token_docs import tokenize_text

    for policy in policies:
        t0 = time.perf_counter()
        pc = apply_overrides(base, [f"scorer.name={policy}"])
        scorer = engine.scorer_for(pc)
        for case, row in zip(cases, rows, strict=True):
            sess = engine.session(_NullSink(), f"passkey-{case.depth}", cfg=pc, scorer=scorer)
            sess.run([case.text])
            got = ask(model, sess, case)
            row["results"][policy] = {"nll": got["answer_nll"], "recovered": got["recovered"],
                                      "at_lod0": got["needle_lod"] == 0, "fact_lod": got["needle_lod"]}  # fmt: skip
        say(f"passkey: {policy} done ({time.perf_counter() - t0:.1f} s)")
    limit = model.max_positions or 1 << 30
    for case, row in zip(cases, rows, strict=True):
        ids = tokenize_text(case.text, model.tokenize)
        answer = np.asarray(model.tokenize(case.answer), np.int64)
        nll, hit = _raw_score(model, ids[-cfg.wc.w_max :], answer)
        row["results"]["window"] = {"nll": nll, "recovered": hit, "at_lod0": case.fact_start >= len(ids) - cfg.wc.w_max}
        fact = ids[case.fact_start : case.fact_end]
        rest = max(1, cfg.wc.w_max - len(fact))
        in_window = case.fact_end > len(ids) - rest  # already among the newest tokens: show them as they are
        nll, hit = _raw_score(model, ids[-rest:] if in_window else np.concatenate([fact, ids[-rest:]]), answer)
        row["results"]["oracle"] = {"nll": nll, "recovered": hit, "at_lod0": True}
        if len(ids) + len(answer) <= limit:
            nll, hit = _raw_score(model, ids, answer)
            row["results"]["full"] = {"nll": nll, "recovered": hit, "at_lod0": True}
    summary = {}
    for name in [*policies, "window", "oracle", "full"]:
        rs = [r["results"][name] for r in rows if name in r["results"]]
        if rs:
            summary[name] = {"nll": float(np.mean([r["nll"] for r in rs])),
                             "recovered": float(np.mean([r["recovered"] for r in rs])),
                             "at_lod0": float(np.mean([r["at_lod0"] for r in rs])), "cases": len(rs)}  # fmt: skip
    return {"scenario": "passkey", "w_max": cfg.wc.w_max, "tokens": int(sum(c.n_tokens for c in cases)),
            "policies": summary, "cases": rows, "model": model.model_id, "weights": engine.weights,
            "position_mode": cfg.wc.position_mode, "config": dataclasses.asdict(pcfg)}  # fmt: skip


def format_passkey(res: dict) -> str:
    """Readable table of a passkey result (stderr)."""
    lines = [f"passkey recall: w_max {res['w_max']}, {len(res['cases'])} cases, model {res['model']}",
             f"{'policy':<12} {'answer nll':>11} {'recovered':>10} {'fact@LOD0':>10}"]  # fmt: skip
    for name, r in res["policies"].items():
        lines.append(f"{name:<12} {r['nll']:>11.4f} {r['recovered']:>10.2f} {r['at_lod0']:>10.2f}")
    for c in res["cases"]:
        per = "  ".join(f"{k} {v['nll']:.2f}{'*' if v['recovered'] else ''}/{v['at_lod0'] and 'L0' or '--'}"
                        for k, v in c["results"].items())  # fmt: skip
        lines.append(f"  len {c['n_tokens']} depth {c['depth']:.2f}: {per}")
    return "\n".join(lines)
