"""Real scorer outputs for the drift replay test (tests/test_drift_replay.py), computed once and committed.

The nprob scorer on the real SmolLM2-135M-Instruct (fp32, CPU) scores each question as a client would send
it: one user message holding the question, drafts of at most --max-tokens tokens. The sets:

- trivia: TriviaQA (triviaqa_sm_sub.jsonl), a seeded permutation; the first --reference rows are the
  pinned reference window, the rest are held-out stationary traffic;
- gsm8k (test.jsonl) and truthfulqa (TruthfulQA.csv): a seeded sample each, the traffic after a switch.

Each set is stored as [row index in its file, raw score] pairs, so the rows can be traced back.

    ROUTER_THREADS=2 python -m bench.drift_scores [--trivia 2000] [--other 300] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path

from localmodel.model import LocalModel
from scorers import ScoreItem
from scorers.nprob import NProbScorer
from train.data import shared_data_dir

DATA = shared_data_dir()
OUT = Path(__file__).parents[1] / "tests" / "data" / "drift_scores.json"
MODEL = "smollm2-135m-instruct"
SEED = 0


def trivia() -> list[str]:
    rows = [json.loads(line) for line in (DATA / "triviaqa" / "triviaqa_sm_sub.jsonl").open()]
    return [r["context"].removeprefix("Question: ").removesuffix("\nAnswer:").strip() for r in rows]


def gsm8k() -> list[str]:
    return [json.loads(line)["question"] for line in (DATA / "gsm8k" / "test.jsonl").open()]


def truthfulqa() -> list[str]:
    with (DATA / "truthfulqa" / "TruthfulQA.csv").open(newline="") as f:
        return [row["Question"] for row in csv.DictReader(f)]


def sample(questions: list[str], n: int) -> list[int]:
    order = list(range(len(questions)))
    random.Random(SEED).shuffle(order)
    return order[:n]


def score(scorer: NProbScorer, questions: list[str], max_tokens: int, batch: int) -> list[float]:
    # Similar lengths share a batch (as the service's micro-batcher groups them), then the order is restored.
    order = sorted(range(len(questions)), key=lambda i: len(questions[i]))
    scores: dict[int, float] = {}
    started = time.perf_counter()
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        items = [ScoreItem([{"role": "user", "content": questions[i]}], max_tokens) for i in chunk]
        for i, result in zip(chunk, scorer.score_batch(items), strict=True):
            scores[i] = result.raw[scorer.primary]
        done = start + len(chunk)
        print(f"  {done}/{len(order)} ({(time.perf_counter() - started) / done:.2f} s each)", flush=True)
    return [scores[i] for i in range(len(questions))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--trivia", type=int, default=2000)
    parser.add_argument("--other", type=int, default=300, help="rows of GSM8K and of TruthfulQA")
    parser.add_argument("--reference", type=int, default=500, help="trivia rows pinned as the reference")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    scorer = NProbScorer(LocalModel(MODEL))
    sets = {"trivia": (trivia(), args.trivia), "gsm8k": (gsm8k(), args.other)}
    sets["truthfulqa"] = (truthfulqa(), args.other)
    result: dict[str, object] = {
        "model": MODEL,
        "scorer": scorer.version,
        "max_draft_tokens": args.max_tokens,
        "seed": SEED,
        "reference_rows": args.reference,
        "command": f"python -m bench.drift_scores --trivia {args.trivia} --other {args.other} "
        f"--reference {args.reference} --max-tokens {args.max_tokens}",
    }
    for name, (questions, n) in sets.items():
        rows = sample(questions, n)
        print(f"{name}: {len(rows)} questions", flush=True)
        raw = score(scorer, [questions[i] for i in rows], args.max_tokens, args.batch)
        result[name] = [[i, round(s, 6)] for i, s in zip(rows, raw, strict=True)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
