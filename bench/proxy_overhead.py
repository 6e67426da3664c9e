"""Start-up time, and the proxy's overhead on the local path.

Baseline: the local model drafting 20 easy trivia answers in-process (`LocalModel.draft`, the work the
default policy does per request). Measured: the same 20 questions through `router serve` on the default
policy over HTTP. The headline is the ratio proxy / baseline of the median per-question time.

    python -m bench.proxy_overhead
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import httpx

from localmodel.model import LocalModel
from policies import DEFAULT_POLICY_PATH, load_policy
from tests.conftest import free_port

QUESTIONS = [
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet in the solar system?",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
    "What is the chemical symbol for water?",
    "Which ocean lies between Europe and North America?",
    "What is the capital of Japan?",
    "Who painted the Mona Lisa?",
    "What is the freezing point of water in degrees Celsius?",
    "Which animal is known as the king of the jungle?",
    "How many days are there in a week?",
    "What is the largest mammal?",
    "In which country are the pyramids of Giza?",
    "What is the square root of 81?",
    "Which planet is known as the red planet?",
    "What language is mainly spoken in Brazil?",
    "Who was the first president of the United States?",
    "What is the tallest mountain in the world?",
    "What gas do plants absorb from the air?",
]
SUFFIX = " Answer in a few words."
MAX_TOKENS = 64


def chat(question: str, max_tokens: int = MAX_TOKENS) -> dict[str, object]:
    return {"model": "router", "max_tokens": max_tokens, "messages": [{"role": "user", "content": question}]}


def main() -> None:
    policy = load_policy(DEFAULT_POLICY_PATH)
    model = LocalModel(policy.scorer.model)
    model.draft([{"role": "user", "content": "Hello."}], 4)  # warm-up
    local = []
    for q in QUESTIONS:
        started = time.perf_counter()
        model.draft([{"role": "user", "content": q + SUFFIX}], MAX_TOKENS)
        local.append(time.perf_counter() - started)
    del model

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    command = [sys.executable, "-m", "router", "serve", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command)
    try:
        healthy = ready = None
        while ready is None:
            try:
                if healthy is None and httpx.get(f"{base}/healthz").status_code == 200:
                    healthy = time.perf_counter() - started
                if httpx.get(f"{base}/readyz").status_code == 200:
                    ready = time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        with httpx.Client(base_url=base, timeout=120) as client:
            client.post("/v1/chat/completions", json=chat("Hello.", max_tokens=4))
            proxied = []
            for q in QUESTIONS:
                started = time.perf_counter()
                client.post("/v1/chat/completions", json=chat(q + SUFFIX)).raise_for_status()
                proxied.append(time.perf_counter() - started)
    finally:
        server.terminate()
        server.wait()

    print(f"start-up: /healthz after {healthy:.2f} s, /readyz after {ready:.2f} s")
    print(
        f"baseline  local draft in-process: median {statistics.median(local) * 1000:.0f} ms, "
        f"total {sum(local):.2f} s for {len(QUESTIONS)} questions"
    )
    print(
        f"measured  through the proxy:      median {statistics.median(proxied) * 1000:.0f} ms, "
        f"total {sum(proxied):.2f} s"
    )
    print(f"total ratio proxy/local: {sum(proxied) / sum(local):.3f}x")
    print(
        f"proxy overhead on the local path (median ratio): "
        f"{statistics.median(proxied) / statistics.median(local):.3f}x"
    )


if __name__ == "__main__":
    main()
