"""policies/examples/two-models.yaml end to end over real HTTP: the real SmolLM2 in-process, the real
Gemma-3-270M behind a second server, the shipped scorer predicting both, and requests going each way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from policies import Policy, load_policy
from tests.conftest import Served

EXAMPLES = Path(__file__).parents[1] / "policies" / "examples"
QUESTIONS = [
    "What is the capital of France? Answer in a few words.",
    "What is the chemical symbol for water? Answer in a few words.",
    "Who wrote the novel War and Peace? Answer in a few words.",
    "Which river flows through Cairo? Answer in a few words.",
    "In which country is the city of Timbuktu? Answer in a few words.",
    "Who was the first person to walk on the moon? Answer in a few words.",
    "What is the largest planet in the solar system? Answer in a few words.",
    "Which composer wrote the opera The Magic Flute? Answer in a few words.",
]


@pytest.fixture(scope="module")
def servers(
    serve: Callable[..., Served], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Served, Served, Policy]]:
    from localmodel import catalog

    catalog.pull("gemma-3-270m")
    gemma = serve(load_policy(EXAMPLES / "gemma.yaml"))
    text = (EXAMPLES / "two-models.yaml").read_text().replace("http://127.0.0.1:8001", gemma.base_url)
    text = text.replace("../scorers/", str(EXAMPLES.parent / "scorers") + "/")
    path = tmp_path_factory.mktemp("two-models") / "two-models.yaml"
    path.write_text(text)
    policy = load_policy(path)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GEMMA_KEY", "unused-by-the-second-server")
        yield serve(policy), gemma, policy


def test_each_question_goes_to_the_cheapest_model_likely_enough_and_both_are_used(
    servers: tuple[Served, Served, Policy],
) -> None:
    routing, _, policy = servers
    [refuse, pick] = policy.rules
    assert refuse.when.confidence_below is not None and pick.min_confidence is not None
    went = set()
    for question in QUESTIONS:
        body = {"model": "router", "messages": [{"role": "user", "content": question}], "max_tokens": 16}
        response = httpx.post(f"{routing.base_url}/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        listed = dict(pair.split("=") for pair in response.headers["x-router-confidences"].split(","))
        small, large = float(listed["smollm2"]), float(listed["gemma"])
        target = response.headers["x-router-target"]
        if max(small, large) < refuse.when.confidence_below:
            expected = "none"
        elif small >= pick.min_confidence:
            expected = "smollm2"
        elif large >= pick.min_confidence or large > small:
            expected = "gemma"
        else:
            expected = "smollm2"
        assert target == expected, (question, small, large)
        assert response.json()["choices"][0]["message"]["content"]
        went.add(target)
    assert {"smollm2", "gemma"} <= went  # a request went each way
