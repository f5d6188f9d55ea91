"""A plain-Python (``math`` only) reference of the spec's section "2026 baselines and off-policy
corrections", written from the spec alone: the five new objectives, the sampler correction on any
objective, the M2PO mask, and every metric key. Used by tests/test_objectives_formulas.py and
tests/test_objectives_correction.py against ``build_objective`` in float64.

A batch is a list of rows; a row holds its counted tokens only (``logp``, ``old``, optional ``behav``
and ``ref``, as lists) and its advantage ``a``. Gradients are d loss / d logp per counted token.
"""

from __future__ import annotations

import math

DEFAULTS = {
    "grpo": {"eps_low": 0.2, "eps_high": 0.2, "agg": "seq_mean_token_mean"},
    "gspo": {"eps_low": 3e-4, "eps_high": 4e-4},
    "gmpo": {"eps_low": 0.4, "eps_high": 0.4},
    "sapo": {"tau_pos": 1.0, "tau_neg": 1.05},
    "sspo": {"gate": "sigmoid", "tau_pos": 1.0, "tau_neg": 1.05},
    "cispo": {"eps_low": 1.0, "eps_high": 4.0, "agg": "token_mean"},
    "dppo_tv": {"delta_low": 0.15, "delta_high": 0.15, "ratio_cap": 20.0, "agg": "token_mean"},
    "dppo_kl": {"delta_low": 0.05, "delta_high": 0.05, "ratio_cap": 20.0, "agg": "token_mean"},
    "vespo": {"k_pos": 2.0, "lambda_pos": 3.0, "k_neg": 3.0, "lambda_neg": 2.0, "agg": "token_mean"},
    "luspo": {"eps_low": 2e-3, "eps_high": 2.5e-3, "agg": "seq_mean_token_sum"},
}
BOUNDS = {
    "none": (None, None),
    "token_truncate": (None, 2.0),
    "sequence_truncate": (None, 2.0),
    "token_mask": (0.5, 5.0),
    "sequence_mask": (0.5, 2.0),
}
TOKEN_LEVEL = {"grpo", "sapo", "cispo", "dppo_tv", "dppo_kl", "vespo"}
NAN = float("nan")


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else NAN


def pop_var(xs):
    xs = list(xs)
    m = mean(xs)
    return mean((x - m) ** 2 for x in xs)


def clip(x, low, high):
    return max(low, min(high, x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def params_of(config: dict) -> dict:
    p = {"beta": 0.0, "log_ratio_clamp": 20.0, "saturation_threshold": 0.1, "correction": "none"}
    p |= DEFAULTS[config["name"]] | config
    low, high = BOUNDS[p["correction"]]
    p.setdefault("correction_min", low)
    p.setdefault("correction_max", high)
    p.setdefault("m2_threshold", None)
    return p


# ------------------------------------------------------------------------------- sampler side


def m2po_keep(rows, p) -> list[list[bool]]:
    """Spec "M2PO mask": over all counted tokens in row-major order."""
    C = p["log_ratio_clamp"]
    flat = [(b, t) for b, row in enumerate(rows) for t in range(len(row["logp"]))]
    keep = [[True] * len(row["logp"]) for row in rows]
    if p["m2_threshold"] is None:
        return keep
    m2 = [clip(rows[b]["old"][t] - rows[b]["behav"][t], -C, C) ** 2 for b, t in flat]
    n = len(m2)
    order = sorted(range(n), key=lambda i: -m2[i])  # stable: earlier positions first among ties
    k = n - 1
    for candidate in range(n):
        rest = [m2[i] for i in order[candidate:]]
        if sum(rest) / len(rest) < p["m2_threshold"]:
            k = candidate
            break
    for i in order[:k]:
        b, t = flat[i]
        keep[b][t] = False
    return keep


def sampler(rows, p):
    """Per row: ds, rho, rho_seq, the ratio at the mode's level, and c (all tokens as sampled)."""
    C = p["log_ratio_clamp"]
    out = []
    mode, low, high = p["correction"], p["correction_min"], p["correction_max"]
    for row in rows:
        ds = [clip(o - m, -C, C) for o, m in zip(row["old"], row["behav"])]
        rho = [math.exp(x) for x in ds]
        rho_seq = math.exp(clip(sum(ds), -C, C))
        level = [rho_seq] * len(ds) if mode.startswith("sequence") else rho
        below = [low is not None and x < low for x in level]
        above = [high is not None and x > high for x in level]
        if mode == "none":
            c = [1.0] * len(ds)
            below = above = [False] * len(ds)
        elif mode.endswith("truncate"):
            c = [min(x, high) if high is not None else x for x in level]
            c = [max(x, low) if low is not None else x for x in c]
        else:
            c = [0.0 if lo or hi else x for x, lo, hi in zip(level, below, above)]
        out.append({"ds": ds, "rho": rho, "rho_seq": rho_seq, "c": c, "below": below, "above": above})
    return out


# ------------------------------------------------------------------------------- objectives


def objective_row(name, p, logp, old, a, log_c):
    """For one row's kept tokens: (token terms u_t or None, J_b or None, omega_t, weight, truncated_t).

    Token-level: u_t includes A_b (REINFORCE form: w * A * logp). Sequence-level: J_b includes A_b.
    ``log_c``: clamp(log c) per kept token for vespo (None: no correction)."""
    C = p["log_ratio_clamp"]
    ds = [clip(x - o, -C, C) for x, o in zip(logp, old)]
    rs = [math.exp(d) for d in ds]
    n = len(ds)
    no_cut = [False] * n
    if name == "grpo":
        lo, hi = 1 - p["eps_low"], 1 + p["eps_high"]
        us = [min(r * a, clip(r, lo, hi) * a) for r in rs]
        clipped = [(a > 0 and r > hi) or (a < 0 and r < lo) for r in rs]
        ws = [min(r, clip(r, lo, hi)) if a > 0 else max(r, clip(r, lo, hi)) for r in rs]
        return us, None, [0.0 if cl else r for cl, r in zip(clipped, rs)], mean(ws), no_cut
    if name == "sapo":
        tau = p["tau_pos"] if a > 0 else p["tau_neg"]
        fs = [4 / tau * sigmoid(tau * (r - 1)) for r in rs]
        om = [4 * sigmoid(tau * (r - 1)) * (1 - sigmoid(tau * (r - 1))) * r for r in rs]
        return [f * a for f in fs], None, om, mean(fs) * tau / 2, no_cut
    if name in ("gspo", "luspo"):
        lo, hi = 1 - p["eps_low"], 1 + p["eps_high"]
        s = math.exp(mean(ds))
        clipped = (a > 0 and s > hi) or (a < 0 and s < lo)
        w = min(s, clip(s, lo, hi)) if a > 0 else max(s, clip(s, lo, hi))
        j = min(s * a, clip(s, lo, hi) * a) * (n if name == "luspo" else 1)
        return None, j, [0.0 if clipped else s] * n, w, no_cut
    if name == "gmpo":
        k = (a > 0) - (a < 0)
        ls = [k * min(k * d, k * clip(d, -p["eps_low"], p["eps_high"])) for d in ds]
        w = math.exp(mean(ls))
        clipped = [(a > 0 and d > p["eps_high"]) or (a < 0 and d < -p["eps_low"]) for d in ds]
        return None, w * a, [0.0 if cl else w for cl in clipped], w, no_cut
    if name == "sspo":
        assert p["gate"] == "sigmoid"
        tau = p["tau_pos"] if a > 0 else p["tau_neg"]
        xs = [tau * (r - 1) for r in rs]
        w = math.exp(mean(math.log(4 / tau) + math.log(sigmoid(x)) for x in xs))
        om = [w * (1 - sigmoid(x)) * tau * r for x, r in zip(xs, rs)]
        return None, w * a, om, w / (2 / tau), no_cut
    if name == "cispo":
        lo, hi = 1 - p["eps_low"], 1 + p["eps_high"]
        ws = [min(r, hi) for r in rs]
        ws = [max(w, lo) if lo > 0 else w for w in ws]
        cut = [r > hi or r < lo for r in rs]
        return [w * a * lp for w, lp in zip(ws, logp)], None, ws, mean(ws), cut
    if name in ("dppo_tv", "dppo_kl"):
        ws = []
        for lp, o, r in zip(logp, old, rs):
            pr, po = math.exp(lp), math.exp(o)
            if name == "dppo_tv":
                valid = pr - po <= p["delta_high"] if a > 0 else pr - po >= -p["delta_low"]
            else:
                kl = po * (o - lp) + (1 - po) * math.log((1 - po + 1e-8) / (1 - pr + 1e-8))
                valid = (kl <= p["delta_high"] or pr <= po) if a > 0 else (kl <= p["delta_low"] or pr >= po)
            ws.append(min(r, p["ratio_cap"]) * valid)
        cut = [r > p["ratio_cap"] for r in rs]
        return [w * a * lp for w, lp in zip(ws, logp)], None, ws, mean(ws), cut
    if name == "vespo":
        floor = math.log(1e-8)
        lw = sum(ds) + (sum(clip(x, floor, C) for x in log_c) if log_c is not None else 0.0)
        lw = clip(lw, floor, C)
        k, lam = (p["k_pos"], p["lambda_pos"]) if a >= 0 else (p["k_neg"], p["lambda_neg"])
        try:
            phi = math.exp(lam + k * lw - lam * math.exp(lw))
        except OverflowError:
            phi = 0.0
        return [phi * a * lp for lp in logp], None, [phi] * n, phi, no_cut
    raise AssertionError(name)


def reference(config: dict, rows: list[dict]):
    """(loss, grads per row over all its counted tokens, metrics) of ``build_objective(config)``."""
    p = params_of(config)
    name = p["name"]
    agg = p.get("agg", "seq_mean_token_mean")
    C = p["log_ratio_clamp"]
    has_behav = rows[0].get("behav") is not None
    keep = m2po_keep(rows, p) if has_behav else [[True] * len(r["logp"]) for r in rows]
    side = sampler(rows, p) if has_behav else None
    corrected = has_behav and p["correction"] != "none"

    kept = []  # per row: indices of kept tokens
    for row, k in zip(rows, keep):
        kept.append([t for t in range(len(row["logp"])) if k[t]])
    b_prime = sum(1 for idx in kept if idx)
    n_tokens = sum(len(idx) for idx in kept)

    def scale(length):  # vanilla |grad| / |A| of one token
        if agg == "token_mean":
            return 1 / n_tokens
        if agg == "seq_mean_token_sum":
            return 1 / b_prime
        return 1 / (b_prime * length)

    loss = 0.0
    grads = [[0.0] * len(row["logp"]) for row in rows]
    omegas_by_row, weights, truncated_by_row = [], [], []
    for b, (row, idx) in enumerate(zip(rows, kept)):
        if not idx:
            omegas_by_row.append([]), weights.append(NAN), truncated_by_row.append([])
            continue
        a = row["a"]
        logp = [row["logp"][t] for t in idx]
        old = [row["old"][t] for t in idx]
        c = [side[b]["c"][t] for t in idx] if corrected else [1.0] * len(idx)
        log_c = None
        if corrected and name == "vespo":
            log_c = [math.log(x) if x > 0 else -math.inf for x in c]
        us, j, om, w, cut = objective_row(name, p, logp, old, a, log_c)
        L = len(idx)
        if name == "vespo":
            c = [1.0] * L  # folded into phi
        if us is not None:  # token-level
            terms = [u * x for u, x in zip(us, c)]
            if agg == "token_mean":
                loss -= sum(terms) / n_tokens
            elif agg == "seq_mean_token_sum":
                loss -= sum(terms) / b_prime
            else:
                loss -= mean(terms) / b_prime
            factors = c
        else:
            cbar = mean(c)
            loss -= j * cbar / b_prime
            factors = [cbar] * L
        for t, o, f in zip(idx, om, factors):
            grads[b][t] = -a * scale(L) * o * f
        omegas_by_row.append(list(om)), weights.append(w), truncated_by_row.append(cut)

    kl_grad = [[0.0] * len(row["logp"]) for row in rows]
    if p["beta"] > 0:
        for b, (row, idx) in enumerate(zip(rows, kept)):
            if not idx:
                continue
            xs = [clip(row["ref"][t] - row["logp"][t], -C, C) for t in idx]
            k3s = [math.exp(x) - x - 1 for x in xs]
            if agg == "token_mean":
                loss += p["beta"] * sum(k3s) / n_tokens
            elif agg == "seq_mean_token_sum":
                loss += p["beta"] * sum(k3s) / b_prime
            else:
                loss += p["beta"] * mean(k3s) / b_prime
            for t, x in zip(idx, xs):
                inside = -C < row["ref"][t] - row["logp"][t] < C
                kl_grad[b][t] = p["beta"] * (1 - math.exp(x)) * scale(len(idx)) * inside
                grads[b][t] += kl_grad[b][t]

    # ---- metrics over mask' (the kept tokens)
    all_omega, pos, neg, trunc = [], [], [], []
    for b, (row, idx) in enumerate(zip(rows, kept)):
        a = row["a"]
        if not idx or a == 0:
            continue
        for t, o, cut in zip(idx, omegas_by_row[b], truncated_by_row[b]):
            total = o + kl_grad[b][t] / (-a * scale(len(idx)))
            all_omega.append(total)
            (pos if a > 0 else neg).append(total)
            trunc.append(1.0 if cut else 0.0)
    ds_kept = [[clip(row["logp"][t] - row["old"][t], -C, C) for t in idx] for row, idx in zip(rows, kept)]
    token_ratios = [math.exp(d) for ds in ds_kept for d in ds]
    seq_ratios = [math.exp(mean(ds)) for ds in ds_kept if ds]
    informative = [w for row, idx, w in zip(rows, kept, weights) if idx and row["a"] != 0]
    threshold = p["saturation_threshold"]
    metrics = {
        "ratio/token_mean": mean(token_ratios),
        "ratio/token_std": math.sqrt(pop_var(token_ratios)),
        "ratio/token_min": min(token_ratios, default=NAN),
        "ratio/token_max": max(token_ratios, default=NAN),
        "ratio/log_abs_mean": mean(abs(d) for ds in ds_kept for d in ds),
        "ratio/seq_mean": mean(seq_ratios),
        "ratio/seq_std": math.sqrt(pop_var(seq_ratios)),
        "ratio/seq_min": min(seq_ratios, default=NAN),
        "ratio/seq_max": max(seq_ratios, default=NAN),
        "weight/seq_mean": mean(informative),
        "weight/seq_var": pop_var(informative),
        "grad_weight/mean": mean(all_omega),
        "grad_weight/pos_mean": mean(pos),
        "grad_weight/neg_mean": mean(neg),
        "grad_weight/saturated_frac": mean(1.0 if o < threshold else 0.0 for o in all_omega),
        "kl/k3": mean(math.exp(d) - d - 1 for ds in ds_kept for d in ds),
        "grad_weight/truncated_frac": mean(trunc),
    }
    if has_behav:
        metrics |= correction_metrics(p, rows, side, keep)
    if rows[0].get("staleness") is not None:
        values = [s for row in rows for s in row["staleness"]]
        metrics |= {"rollout/staleness_mean": mean(values), "rollout/staleness_max": max(values, default=NAN)}
    return loss, grads, metrics


def correction_metrics(p, rows, side, keep) -> dict[str, float]:
    """Spec "Correction keys": over the counted tokens as sampled, sequence values broadcast."""
    mode = p["correction"]
    c = [x for s in side for x in s["c"]]
    below = [x for s in side for x in s["below"]]
    above = [x for s in side for x in s["above"]]
    rho = [x for s in side for x in s["rho"]]
    ds = [x for s in side for x in s["ds"]]
    n = len(c)
    sum_c, sum_c2 = sum(c), sum(x * x for x in c)
    outside = [1.0 if lo or hi else 0.0 for lo, hi in zip(below, above)]
    dropped = [0.0 if k else 1.0 for row_keep in keep for k in row_keep]
    return {
        "correction/weight_mean": mean(c),
        "correction/weight_min": min(c, default=NAN),
        "correction/weight_max": max(c, default=NAN),
        "correction/ess": (NAN if n == 0 else 0.0 if sum_c2 == 0 else sum_c**2 / (n * sum_c2)),
        "correction/low_frac": mean(1.0 if x else 0.0 for x in below),
        "correction/high_frac": mean(1.0 if x else 0.0 for x in above),
        "correction/masked_frac": mean(outside) if mode.endswith("mask") else mean(0.0 for _ in c),
        "correction/truncated_frac": mean(outside) if mode.endswith("truncate") else mean(0.0 for _ in c),
        "correction/chi2_token": mean(x * x for x in rho) - 1,
        "correction/chi2_seq": mean(s["rho_seq"] ** 2 for s, row in zip(side, rows) if row["logp"]) - 1,
        "correction/kl_k3": mean(r - d - 1 for r, d in zip(rho, ds)),
        "correction/m2_mean": mean(d * d for d in ds),
        "correction/m2_masked_frac": mean(dropped),
    }


# ------------------------------------------------------------------------------- tensors


def to_tensors(rows: list[dict], width: int | None = None):
    """Padded float64 tensors (garbage off the mask) for ``build_objective``: a dict of keyword arguments."""
    import torch

    width = width or max(1, max(len(r["logp"]) for r in rows))
    B = len(rows)

    def pad(key, fill):
        out = torch.full((B, width), fill, dtype=torch.float64)
        for b, row in enumerate(rows):
            if row.get(key) is not None and row[key]:
                out[b, : len(row[key])] = torch.tensor(row[key], dtype=torch.float64)
        return out

    mask = torch.zeros(B, width)
    for b, row in enumerate(rows):
        mask[b, : len(row["logp"])] = 1
    kwargs = {
        "logp": pad("logp", 7.0).requires_grad_(True),
        "old_logp": pad("old", -30.0),
        "advantages": torch.tensor([r["a"] for r in rows], dtype=torch.float64),
        "mask": mask,
    }
    if rows[0].get("behav") is not None:
        kwargs["behav_logp"] = pad("behav", 25.0)
    if rows[0].get("ref") is not None:
        kwargs["ref_logp"] = pad("ref", -80.0)
    if rows[0].get("staleness") is not None:
        kwargs["staleness"] = pad("staleness", 1000.0)
    return kwargs
