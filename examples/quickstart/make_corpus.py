"""Generate the quickstart corpus: synthetic documents whose words recur far beyond one segment.

Each document draws a handful of *topic words* from a large pool of made-up words, announces them in
a title line (``= tovame kirusa ... =``), and then writes sentences that mention them again and
again, for hundreds of tokens, between filler words (determiners, verbs, adjectives, ...) shared by
all documents. Which topic words a document uses can only be known from what came earlier in the
same document:

* a model that sees only the current segment (``mem_len 0``) must guess the first topic words of
  every segment among the whole pool (about ``ln(pool)`` nats each);
* a model with a memory longer than the segment has already seen the document's few topic words
  (about ``ln(topics_per_doc)`` nats each).

So the perplexity gap between ``mem_len 0`` and a long memory measures whether the memory is really
used. Everything is drawn from one seeded ``random.Random``, so a seed always gives the same bytes.

    python examples/quickstart/make_corpus.py --out-dir runs/quickstart/text
    # -> train.txt valid.txt test.txt (one paragraph per line, a blank line between documents)
"""
import argparse
import os
import random
from typing import Dict, List

# Filler shared by every document: real words, so the text reads like (silly) English.
VERBS = ["sees", "follows", "meets", "builds", "finds", "calls", "helps", "visits"]
ADJECTIVES = ["old", "young", "quiet", "bright", "famous", "clever"]
NOUNS = ["river", "market", "tower", "garden", "bridge", "forest"]
PREPOSITIONS = ["near", "behind", "across", "inside"]
CONNECTIVES = ["later", "then", "again", "still"]

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"


def make_topic_pool(rng: random.Random, size: int) -> List[str]:
    """``size`` distinct pronounceable made-up words of three syllables (none is a filler word)."""
    taken = set(VERBS + ADJECTIVES + NOUNS + PREPOSITIONS + CONNECTIVES)
    pool: List[str] = []
    while len(pool) < size:
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(3))
        if word not in taken:
            taken.add(word)
            pool.append(word)
    return pool


def make_sentence(rng: random.Random, topics: List[str]) -> List[str]:
    """One short sentence; about 40 % of its words are the document's topic words."""
    t1, t2 = rng.choice(topics), rng.choice(topics)
    form = rng.randrange(4)
    if form == 0:
        words = [t1, rng.choice(VERBS), t2]
    elif form == 1:
        words = ["the", rng.choice(ADJECTIVES), t1, rng.choice(VERBS), "the", t2]
    elif form == 2:
        words = [t1, "and", t2, rng.choice(VERBS), rng.choice(PREPOSITIONS), "the", rng.choice(NOUNS)]
    else:
        words = [rng.choice(CONNECTIVES), t1, "is", rng.choice(ADJECTIVES)]
    return words + ["."]


def make_document(rng: random.Random, pool: List[str], topics_per_doc: int,
                  min_paragraphs: int, max_paragraphs: int) -> List[str]:
    """Lines of one document: a title naming its topic words, then paragraphs using them."""
    topics = rng.sample(pool, topics_per_doc)
    lines = ["= " + " ".join(topics) + " ="]
    for _ in range(rng.randint(min_paragraphs, max_paragraphs)):
        words: List[str] = []
        for _ in range(rng.randint(3, 6)):
            words += make_sentence(rng, topics)
        lines.append(" ".join(words))
    return lines


def make_split(rng: random.Random, pool: List[str], num_tokens: int, **doc_args) -> List[str]:
    """Whole documents (separated by a blank line) until about ``num_tokens`` words are written."""
    lines: List[str] = []
    written = 0
    while written < num_tokens:
        for line in make_document(rng, pool, **doc_args):
            lines.append(line)
            written += len(line.split()) + 1  # + end of line, which fairseq counts as a token
        lines.append("")
        written += 1
    return lines


def make_corpus(seed: int = 1, train_tokens: int = 200_000, valid_tokens: int = 20_000,
                test_tokens: int = 20_000, pool_size: int = 1000, topics_per_doc: int = 5,
                min_paragraphs: int = 6, max_paragraphs: int = 12) -> Dict[str, List[str]]:
    """The three splits as lists of lines; the same arguments always give the same text."""
    if topics_per_doc > pool_size:
        raise ValueError(f"topics_per_doc ({topics_per_doc}) cannot exceed pool_size ({pool_size})")
    if not 1 <= min_paragraphs <= max_paragraphs:
        raise ValueError("need 1 <= min_paragraphs <= max_paragraphs")
    rng = random.Random(seed)
    pool = make_topic_pool(rng, pool_size)
    doc_args = dict(topics_per_doc=topics_per_doc, min_paragraphs=min_paragraphs,
                    max_paragraphs=max_paragraphs)
    return {
        split: make_split(rng, pool, n, **doc_args)
        for split, n in (("train", train_tokens), ("valid", valid_tokens), ("test", test_tokens))
    }


def write_corpus(out_dir: str, corpus: Dict[str, List[str]]) -> None:
    os.makedirs(out_dir, exist_ok=True)
    for split, lines in corpus.items():
        with open(os.path.join(out_dir, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True, help="where train/valid/test.txt are written")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--train-tokens", type=int, default=200_000)
    parser.add_argument("--valid-tokens", type=int, default=20_000)
    parser.add_argument("--test-tokens", type=int, default=20_000)
    parser.add_argument("--pool-size", type=int, default=1000, help="topic words to draw from")
    parser.add_argument("--topics-per-doc", type=int, default=5)
    args = parser.parse_args(argv)
    corpus = make_corpus(seed=args.seed, train_tokens=args.train_tokens,
                         valid_tokens=args.valid_tokens, test_tokens=args.test_tokens,
                         pool_size=args.pool_size, topics_per_doc=args.topics_per_doc)
    write_corpus(args.out_dir, corpus)
    for split, lines in corpus.items():
        print(f"{split}: {len(lines)} lines, {sum(len(l.split()) + 1 for l in lines)} tokens")


if __name__ == "__main__":
    main()
