#!/usr/bin/env python3
"""Writes examples/quickstart/: synthetic chat data, a tiny byte-level BPE tokenizer and a tiny
Llama config for the README's first command (train a random-weight model on CPU in minutes).

The skill: topic classification. The user gives a sentence (or two) and asks which topic it is
about (sports, food, weather, music, travel or animals); later user turns may bring another
sentence, and the question is always about the latest one. The system prompt sets the answer
style: one word (`sports`) or a sentence (`The topic is sports.`, also without a system
prompt). Sentences are templates with filler words and 1-3 topic words drawn at random, so
held-out sentences are new combinations (none occurs in training) of words seen in training.

Deterministic (seeded); needs only the standard library and the `tokenizers` package:

    python scripts/make-quickstart.py [--out examples/quickstart]
"""

import argparse
import json
import os
import random
import re

SEED = 20260128
N_ALPACA = 800
N_SHAREGPT = 800
N_EVAL = 70

# ---------------------------------------------------------------------------------------------
# Vocabulary of the world
# ---------------------------------------------------------------------------------------------

TOPICS = {
    "sports": [
        "ball", "goal", "team", "coach", "match", "score", "racket", "tennis", "soccer", "hockey",
        "league", "trophy", "helmet", "golf", "boxing", "medal", "sprint", "jersey", "player",
        "referee", "skates", "bat", "umpire", "rugby", "stadium",
    ],
    "food": [
        "bread", "soup", "pizza", "cheese", "apple", "rice", "noodles", "salad", "cake", "pasta",
        "butter", "carrot", "tomato", "chef", "oven", "sugar", "honey", "pepper", "lunch",
        "dinner", "cookie", "potato", "onion", "garlic", "menu",
    ],
    "weather": [
        "rain", "snow", "wind", "storm", "cloud", "sunshine", "thunder", "fog", "forecast",
        "umbrella", "hail", "drizzle", "breeze", "frost", "rainbow", "sky", "ice", "flood",
        "tornado", "mist", "sleet", "drought", "lightning", "heatwave", "raincoat",
    ],
    "music": [
        "guitar", "piano", "song", "concert", "band", "drum", "melody", "violin", "singer",
        "chorus", "album", "rhythm", "lyrics", "trumpet", "flute", "tune", "radio", "jazz",
        "opera", "choir", "harmony", "cello", "banjo", "ballad", "playlist",
    ],
    "travel": [
        "airport", "passport", "ticket", "hotel", "luggage", "train", "flight", "suitcase", "map",
        "tourist", "beach", "journey", "vacation", "museum", "border", "cruise", "taxi", "island",
        "visa", "backpack", "tour", "resort", "souvenir", "ferry", "trip",
    ],
    "animals": [
        "dog", "cat", "horse", "bird", "tiger", "rabbit", "fish", "lion", "monkey", "cow",
        "sheep", "zebra", "wolf", "bear", "fox", "duck", "owl", "frog", "snake", "whale", "goat",
        "pig", "mouse", "deer", "parrot",
    ],
}
TOPIC_NAMES = list(TOPICS)

# Filler: topic-neutral words around the topic words.
SUBJECTS = ["my friend", "our neighbor", "she", "he", "my brother", "my sister", "the teacher",
            "everyone", "we", "they", "my aunt", "the kids"]
VERBS = ["talked about", "liked", "noticed", "read about", "remembered", "asked about",
         "wrote about", "thought about", "loved", "mentioned", "saw", "forgot"]
TIMES = ["yesterday", "last week", "this morning", "on Sunday", "every day", "at night",
         "all afternoon", "again", "today", "last summer"]
ADJS = ["big", "lovely", "new", "small", "strange", "nice", "famous", "quiet", "long", "bright"]
# Sentence templates; {a} {b} {c} are topic words of one topic.
TEMPLATES = {
    1: [
        "{S} {v} the {a} {t}.",
        "{T}, {s} {v} the {j} {a}.",
        "There was a {j} {a} {t}.",
        "I {v} the {a}.",
        "{S} never {v} the {a}.",
        "Have you ever {v} the {j} {a}?",
    ],
    2: [
        "{S} {v} the {a} and the {b} {t}.",
        "{T}, {s} {v} the {a} near the {b}.",
        "The {a} and the {b} were {j}.",
        "I {v} the {j} {a} and the {b}.",
        "{S} {v} the {a}, then the {b}.",
    ],
    3: [
        "{S} {v} the {a}, the {b} and the {c} {t}.",
        "{T}, {s} {v} the {a}, the {b} and the {c}.",
        "The {a}, the {b} and the {c} were all {j}.",
    ],
}

SYSTEM_SENTENCE = [
    "You are a helpful assistant.",
    "Answer in a full sentence.",
    "You are a friendly assistant.",
]
SYSTEM_SHORT = [
    "Answer with one word.",
    "Reply with just the topic.",
    "One word only.",
    "Be brief.",
]
# First question (before or after the sentence, on its own line or not).
QUESTIONS = [
    "What is the topic of this sentence?",
    "Which topic is this about?",
    "What topic is this?",
    "What is this sentence about?",
    "Classify the topic of this text.",
]
# Follow-up turns: a new sentence with a short question.
FOLLOW = [
    "And this one: {x}",
    "What about this: {x}",
    "Now this sentence: {x}",
    "{x}\nWhat topic is that?",
    "Next one. {x}",
    "How about: {x}",
]
ANSWER_SENTENCE = "The topic is {topic}."
ANSWER_SHORT = "{topic}"


def sentence(rng, topic):
    """One sentence about `topic` with 1-3 of its words (sometimes two such sentences)."""
    def one():
        n = rng.choice([1, 2, 2, 3, 3])
        a, b, c = rng.sample(TOPICS[topic], 3)
        s, t = rng.choice(SUBJECTS), rng.choice(TIMES)
        text = rng.choice(TEMPLATES[n]).format(
            a=a, b=b, c=c, s=s, S=s[0].upper() + s[1:], v=rng.choice(VERBS), t=t,
            T=t[0].upper() + t[1:], j=rng.choice(ADJS))
        return text
    return one() if rng.random() < 0.8 else one() + " " + one()


def conversation(rng, seen=None):
    """One conversation as OpenAI messages: a first user turn with a sentence and a question,
    then (about half the time) one or two more user turns with a new sentence each. Every
    assistant turn names the topic of the latest sentence, in the style the system prompt asks
    for. With `seen` (a set of training sentences), no sentence of the conversation is in it."""
    turns = 1 if rng.random() < 0.5 else rng.choice([2, 2, 3])
    short = rng.random() < 0.45
    msgs = []
    if short:
        msgs.append({"role": "system", "content": rng.choice(SYSTEM_SHORT)})
    elif rng.random() < 0.6:
        msgs.append({"role": "system", "content": rng.choice(SYSTEM_SENTENCE)})
    for i in range(turns):
        topic = rng.choice(TOPIC_NAMES)
        x = sentence(rng, topic)
        while seen is not None and x in seen:
            x = sentence(rng, topic)
        if i == 0:
            q = rng.choice(QUESTIONS)
            sep = rng.choice([" ", "\n", "\n"])
            user = q + sep + x if rng.random() < 0.5 else x + sep + q
        else:
            user = rng.choice(FOLLOW).format(x=x)
        msgs.append({"role": "user", "content": user})
        msgs.append({"role": "assistant", "content": (ANSWER_SHORT if short else ANSWER_SENTENCE).format(topic=topic)})
    return msgs


def sentences_of(msgs):
    """The sentences a conversation asks about (to keep held-out ones out of training)."""
    out = []
    for m in msgs:
        if m["role"] != "user":
            continue
        text = m["content"]
        for q in QUESTIONS + ["What topic is that?"]:
            text = text.replace(q, "")
        for f in FOLLOW:
            for part in f.split("{x}"):
                if part.strip() and text.startswith(part.strip()):
                    text = text[len(part.strip()):]
        out.append(text.strip())
    return out


def to_alpaca(msgs, rng):
    row = {}
    if msgs[0]["role"] == "system":
        row["system"] = msgs[0]["content"]
        msgs = msgs[1:]
    pairs = [(msgs[i]["content"], msgs[i + 1]["content"]) for i in range(0, len(msgs), 2)]
    *history, (last_user, last_out) = pairs
    # A question line followed by the sentence as instruction + input (joined with "\n" by
    # Alpaca loaders); otherwise the whole turn as the instruction.
    if "\n" in last_user and last_user.split("\n", 1)[0] in QUESTIONS and rng.random() < 0.8:
        row["instruction"], row["input"] = last_user.split("\n", 1)
    else:
        row["instruction"], row["input"] = last_user, ""
    row["output"] = last_out
    if history:
        row["history"] = [list(p) for p in history]
    # Key order as in common Alpaca files.
    return {k: row[k] for k in ["system", "instruction", "input", "output", "history"] if k in row}


def to_sharegpt(msgs):
    frm = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": frm[m["role"]], "value": m["content"]} for m in msgs]}


def heldout_rows(convs):
    """One prompt per held-out conversation: everything before its last assistant turn, so a
    multi-turn prompt asks about its latest sentence."""
    return [{"messages": m[:-1], "expected": m[-1]["content"]} for m in convs]


# ---------------------------------------------------------------------------------------------
# Tokenizer and model config
# ---------------------------------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Merges learned from the text; then merges that make every topic word (with its leading space)
# and every topic name (with and without the space) one token are appended, so the model sees
# each word as one embedding. 829 tokens in all.
LEARNED_VOCAB = 400


def train_tokenizer(texts, out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(
        vocab_size=LEARNED_VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    words = [" " + w for ws in TOPICS.values() for w in ws]
    words += [" " + t for t in TOPIC_NAMES] + TOPIC_NAMES
    for _ in range(5):
        model = json.loads(tok.to_str())["model"]
        vocab, merges = model["vocab"], [tuple(m) for m in model["merges"]]
        missing = [w for w in words if len(tok.encode(w).ids) > 1]
        if not missing:
            break
        known = set(merges)
        for w in missing:
            pieces = tok.encode(w).tokens
            cur = pieces[0]
            for p in pieces[1:]:
                if (cur, p) not in known:
                    merges.append((cur, p))
                    known.add((cur, p))
                cur += p
                if cur not in vocab:
                    vocab[cur] = len(vocab)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.add_special_tokens(SPECIALS)
        tok.pre_tokenizer = pre
    assert not missing, missing
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    assert all(len(tok.encode(w).ids) == 1 for w in words)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 512,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    write_json(os.path.join(out_dir, "tokenizer_config.json"), config)
    return tok.get_vocab_size()


def model_config(vocab_size):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": None,
        "eos_token_id": SPECIALS.index("<|im_end|>"),
        "pad_token_id": 0,
        "dtype": "float32",
        "use_cache": True,
    }


# ---------------------------------------------------------------------------------------------


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "examples", "quickstart"))
    args = ap.parse_args()
    out = os.path.normpath(args.out)
    os.makedirs(out, exist_ok=True)

    rng = random.Random(SEED)
    train = [conversation(rng) for _ in range(N_ALPACA + N_SHAREGPT)]
    alpaca = [to_alpaca(m, rng) for m in train[:N_ALPACA]]
    sharegpt = [to_sharegpt(m) for m in train[N_ALPACA:]]

    # Held-out: half single-turn, half multi-turn (asking about the second or third sentence);
    # no sentence of a held-out conversation occurs in training.
    seen = {s for m in train for s in sentences_of(m)}
    evals = []
    while len(evals) < N_EVAL:
        m = conversation(rng, seen)
        turns = sum(x["role"] == "user" for x in m)
        if (turns > 1) == (len(evals) % 2 == 1):
            evals.append(m)
    train_text = "\n".join(x["content"] for m in train for x in m)
    for m in evals:
        for s in sentences_of(m):
            assert s not in seen, s
            for part in re.findall(r"[^.?]+[.?]", s):
                assert part.strip() not in train_text, part

    write_jsonl(os.path.join(out, "train_alpaca.jsonl"), alpaca)
    write_jsonl(os.path.join(out, "train_sharegpt.jsonl"), sharegpt)
    write_jsonl(os.path.join(out, "eval.jsonl"), [{"messages": m} for m in evals])
    write_jsonl(os.path.join(out, "heldout.jsonl"), heldout_rows(evals))

    texts = [x["content"] for m in train for x in m] + [f"{r}\n" for r in ("system", "user", "assistant")]
    vocab = train_tokenizer(texts, os.path.join(out, "tokenizer"))
    write_json(os.path.join(out, "config.json"), model_config(vocab))
    print(f"wrote {out}: {len(alpaca)} alpaca + {len(sharegpt)} sharegpt rows, "
          f"{len(evals)} eval conversations, vocab {vocab}")


if __name__ == "__main__":
    main()
