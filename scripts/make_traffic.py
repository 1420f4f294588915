"""Write a traffic file for ``graphthrift bench --traffic``, built from the bundled data.

    python scripts/make_traffic.py examples/traffic.jsonl            # the shipped example
    python scripts/make_traffic.py /tmp/traffic-10k.jsonl --n 10000  # a load test

Requests in OpenAI chat-completions form, as a proxy or gateway logs them: several tenants;
a support FAQ bot (banking77 questions: verbatim repeats and paraphrases of the same
intent), a RAG assistant (xquad_en questions with a "Context:" of four paragraphs), and
multi-turn task conversations (sgd_test dialogues, turn by turn, half with a
metadata.thread_id and half grouped by their shared prefix). Every line carries the
provider's response and usage; every tenth is in the wrapped {"request", "response"}
form. Seeded, so the same arguments write the same file.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
from pathlib import Path
from typing import Any

from graphthrift.bench._data import data_file, read_set_file
from graphthrift.bench._data_history import load_sgd
from graphthrift.bench.compress import load_squad
from graphthrift.text import count_messages, count_text

TENANTS = ("acme-bank", "globex-travel", "initech-support")
FAQ_SYSTEM = (
    "You are the support assistant of a digital bank. Answer in two or three sentences, "
    "point to the screen in the app where the customer can act, never ask for a full card "
    "number or a password, and offer a human agent when the customer asks twice."
)
RAG_SYSTEM = "Answer the question using only the context below. Quote figures exactly."
CHAT_SYSTEM = "You are a booking assistant. Confirm every detail the customer gives."


def _usage(messages: list[dict[str, Any]], answer: str, model: str) -> dict[str, Any]:
    prompt = count_messages(messages).tokens
    return {
        "id": "chatcmpl-example",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": count_text(answer),
            "total_tokens": prompt + count_text(answer),
        },
    }


def _line(
    model: str, messages: list[dict[str, Any]], answer: str, meta: dict[str, str], wrap: bool
) -> str:
    request = {"model": model, "messages": messages, "metadata": meta}
    response = _usage(messages, answer, model)
    obj = {"request": request, "response": response} if wrap else {**request, "response": response}
    return json.dumps(obj, ensure_ascii=False)


def faq(rng: random.Random, n: int) -> list[tuple[str, list[dict[str, Any]], str, dict[str, str]]]:
    rows = list(csv.DictReader(io.StringIO(read_set_file("banking77", "test.csv"))))
    by_intent: dict[str, list[str]] = {}
    for row in rows:
        by_intent.setdefault(row["category"], []).append(row["text"])
    intents = rng.sample(sorted(by_intent), 8)
    asked: dict[str, list[str]] = {}
    out = []
    for _ in range(n):
        intent = rng.choices(intents, [1 / (k + 1) for k in range(len(intents))])[0]
        seen = asked.setdefault(intent, [])
        if seen and rng.random() < 0.35:
            text = rng.choice(seen)  # a verbatim repeat
        else:
            text = rng.choice(by_intent[intent])  # often a paraphrase of an earlier one
            seen.append(text)
        words = intent.replace("_", " ")
        answer = (
            f"About {words}: open the app, go to Help and choose '{words}'; the steps are shown"
            " there. If that does not solve it, reply here and I will pass you to a colleague."
        )
        tenant = TENANTS[0] if rng.random() < 0.7 else TENANTS[2]
        messages = [{"role": "system", "content": FAQ_SYSTEM}, {"role": "user", "content": text}]
        out.append(("gpt-4o", messages, answer, {"tenant_id": tenant, "feature": "faq"}))
    return out


def rag(rng: random.Random, n: int) -> list[tuple[str, list[dict[str, Any]], str, dict[str, str]]]:
    articles = load_squad(data_file("xquad_en", "xquad.en.json"))
    out = []
    for _ in range(n):
        _, items = rng.choice(articles)
        context, question, answers = rng.choice(items)
        others = [c for c, _, _ in items if c != context]
        paragraphs = [context, *rng.sample(sorted(set(others)), min(3, len(set(others))))]
        rng.shuffle(paragraphs)
        system = RAG_SYSTEM + "\n\nContext:\n" + "\n\n".join(paragraphs)
        answer = f"According to the context, the answer is {answers[0]}."
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        meta = {"tenant_id": TENANTS[rng.randrange(3)], "feature": "rag"}
        out.append(("gpt-4.1", messages, answer, meta))
    return out


def chats(
    rng: random.Random, n: int
) -> list[tuple[str, list[dict[str, Any]], str, dict[str, str]]]:
    dialogues = [
        d for d in load_sgd(data_file("sgd_test", "sgd_test_compact.jsonl")) if len(d.turns) >= 16
    ]
    out: list[tuple[str, list[dict[str, Any]], str, dict[str, str]]] = []
    k = 0
    while len(out) < n:
        conv = dialogues[rng.randrange(len(dialogues))]
        tenant = TENANTS[1]
        meta = {"tenant_id": tenant, "feature": "booking"}
        if k % 2 == 0:
            meta["thread_id"] = f"thread-{conv.id}-{k}"
        k += 1
        history: list[dict[str, Any]] = [{"role": "system", "content": CHAT_SYSTEM}]
        for j, turn in enumerate(conv.turns):
            if turn.role != "user":
                history.append({"role": "assistant", "content": turn.content})
                continue
            history.append({"role": "user", "content": turn.content})
            nxt = (
                conv.turns[j + 1].content if j + 1 < len(conv.turns) else "Is there anything else?"
            )
            out.append(("gpt-4o", list(history), nxt, dict(meta)))
            if len(out) >= n:
                break
    return out


def build(n: int, seed: int = 11) -> list[str]:
    """``n`` lines: about 45 % FAQ, 15 % RAG, 40 % conversation turns, interleaved."""
    rng = random.Random(seed)
    parts = [faq(rng, round(n * 0.45)), rag(rng, round(n * 0.15))]
    parts.append(chats(rng, n - len(parts[0]) - len(parts[1])))
    # interleave: conversations keep their turn order, the rest arrive in between
    queues = [list(p) for p in parts]
    lines = []
    while any(queues):
        weights = [len(q) for q in queues]
        q = rng.choices(range(len(queues)), weights)[0]
        model, messages, answer, meta = queues[q].pop(0)
        lines.append(_line(model, messages, answer, meta, wrap=len(lines) % 10 == 9))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=120, help="requests (default 120)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(build(args.n, args.seed)) + "\n", encoding="utf-8")
    print(f"wrote {args.n} requests to {args.out}")


if __name__ == "__main__":
    main()
