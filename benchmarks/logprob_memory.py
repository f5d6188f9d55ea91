"""Peak memory of turning completion logits into log-probs: chunked (the project) vs naive.

    python benchmarks/logprob_memory.py                 # 150k vocabulary, both modes
    python benchmarks/logprob_memory.py --rows 128      # the workload's 128 completions (~2.5 GB peak)

A Qwen2-style model with a Qwen-sized vocabulary (151,936) but tiny otherwise (hidden 64,
1 layer), `--rows` completions of 8 tokens after a 7-token prompt. Each variant runs in a fresh
process and reports its peak RSS above what it held before the forward:
- naive:   `log_softmax(logits.float() / T).gather(...)` over the whole batch,
- chunked: `sspo_cli.models.logprobs.completion_logprobs` (the project's path: the LM head and
  logsumexp run `performance.logprob_chunk_mb` MiB of logits at a time, recomputed in backward),
in `behaviour` mode (no grad, as for the behaviour/reference log-probs) and `update` mode
(forward + backward, as in an optimiser update). The model's own logits tensor is the same in
both; what differs is the float32 log-softmax on top of it. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import current_rss_mb, peak_rss_mb, qwen2_model  # noqa: E402

PROMPT_LEN, COMPLETION_LEN = 7, 8


def naive_logprobs(logits, tokens, temperature: float):
    import torch

    return torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def measure(variant: str, mode: str, vocab: int, rows: int, temperature: float, chunk_mb: float) -> dict[str, float]:
    """Runs in its own process: peak RSS is per process."""
    import torch

    from sspo_cli.models.logprobs import completion_logits, completion_logprobs

    torch.set_num_threads(2)
    model = qwen2_model(vocab=vocab, hidden=64, layers=1, heads=2, kv_heads=1, intermediate=128, positions=64, seed=0)
    input_ids = torch.randint(0, vocab, (rows, PROMPT_LEN + COMPLETION_LEN))
    attention_mask = torch.ones_like(input_ids)
    tokens = input_ids[:, -COMPLETION_LEN:]
    before = current_rss_mb()

    def logprobs():
        if variant == "naive":
            return naive_logprobs(
                completion_logits(model, input_ids, attention_mask, COMPLETION_LEN), tokens, temperature
            )
        return completion_logprobs(model, input_ids, attention_mask, COMPLETION_LEN, temperature, chunk_mb=chunk_mb)[0]

    if mode == "behaviour":
        with torch.inference_mode():
            logp = logprobs()
    else:
        logp = logprobs()
        logp.sum().backward()
    peak = peak_rss_mb()
    logits_mb = rows * COMPLETION_LEN * vocab * 4 / 2**20
    return {
        "variant": variant,
        "mode": mode,
        "peak_rss_mb": peak,
        "peak_above_start_mb": peak - before,
        "full_logits_fp32_mb": logits_mb,
        "checksum": float(logp.detach().sum()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--rows", type=int, default=64, help="Completions in the batch.")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--chunk-mb", type=float, default=64.0, help="performance.logprob_chunk_mb")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(*args.one, args.vocab, args.rows, args.temperature, args.chunk_mb)))
        return

    results = []
    for mode in ("behaviour", "update"):
        for variant in ("naive", "chunked"):
            command = [
                sys.executable,
                __file__,
                "--one",
                variant,
                mode,
                "--vocab",
                str(args.vocab),
                "--rows",
                str(args.rows),
                "--temperature",
                str(args.temperature),
                "--chunk-mb",
                str(args.chunk_mb),
            ]
            line = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results.append(json.loads(line))
            print(line)
    by = {(r["variant"], r["mode"]): r for r in results}
    summary = {
        "vocab": args.vocab,
        "rows": args.rows,
        "completion_tokens": COMPLETION_LEN,
        "full_logits_fp32_mb": results[0]["full_logits_fp32_mb"],
        **{
            f"{mode}_{variant}_peak_above_start_mb": round(by[(variant, mode)]["peak_above_start_mb"], 1)
            for mode in ("behaviour", "update")
            for variant in ("naive", "chunked")
        },
        "same_logprobs": all(
            abs(by[("naive", m)]["checksum"] - by[("chunked", m)]["checksum"])
            < 1e-2 * abs(by[("naive", m)]["checksum"])
            for m in ("behaviour", "update")
        ),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
