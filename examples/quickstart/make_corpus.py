"""Generate the quickstart corpus: synthetic documents whose topic is only known from far back.

There are a few *topics* (8 by default), each a fixed set of made-up words (4 by default). A
document picks one topic, names its words in a title line (``= tovame kirusa ... =``), and then
writes hundreds of tokens of short sentences. About half of them mention one of the topic's words;
the others are filler (determiners, verbs, adjectives, nouns) shared by every document. So a topic
word follows about every 12 tokens, and what it will be depends on the document:

* a model that sees only the current segment has often seen no topic word of this document yet, and
  must spread its guess over every topic's words (about ``ln(topics * words_per_topic)`` nats);
* a model with a memory reaching back to the title or to an earlier mention knows the topic, and
  only has to choose among its few words (about ``ln(words_per_topic)`` nats).

The gain shows on the topic words themselves, which ``is_topic_word`` picks out for the
quickstart's per-word report. Everything is drawn from one seeded ``random.Random``, so a seed
always gives the same bytes.

    python -m examples.quickstart.make_corpus --out-dir runs/quickstart/text   # (repository root)
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
FUNCTION_WORDS = ["the", "a", "is", ".", "="]
FILLER = frozenset(VERBS + ADJECTIVES + NOUNS + PREPOSITIONS + CONNECTIVES + FUNCTION_WORDS)

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"


def is_topic_word(word: str) -> bool:
    """Whether ``word`` (a token of the corpus, or fairseq's ``</s>``) is one of the topic words."""
    return word not in FILLER and word != "</s>"


def make_topics(rng: random.Random, num_topics: int, words_per_topic: int) -> List[List[str]]:
    """``num_topics`` disjoint lists of ``words_per_topic`` pronounceable made-up words of three
    syllables (none is a filler word)."""
    taken = set(FILLER)
    words: List[str] = []
    while len(words) < num_topics * words_per_topic:
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(3))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return [words[i * words_per_topic:(i + 1) * words_per_topic] for i in range(num_topics)]


def filler_sentence(rng: random.Random) -> List[str]:
    form = rng.randrange(3)
    if form == 0:
        words = ["the", rng.choice(ADJECTIVES), rng.choice(NOUNS), "is", rng.choice(ADJECTIVES)]
    elif form == 1:
        words = [rng.choice(CONNECTIVES), "the", rng.choice(NOUNS), rng.choice(VERBS), "the",
                 rng.choice(NOUNS)]
    else:
        words = ["a", rng.choice(NOUNS), rng.choice(PREPOSITIONS), "the", rng.choice(NOUNS)]
    return words + ["."]


def topic_sentence(rng: random.Random, topic: List[str]) -> List[str]:
    """A sentence mentioning one of ``topic``'s words, in a slot a filler noun could also fill."""
    word = rng.choice(topic)
    form = rng.randrange(3)
    if form == 0:
        words = ["the", rng.choice(ADJECTIVES), word, rng.choice(VERBS), "the", rng.choice(NOUNS)]
    elif form == 1:
        words = [rng.choice(CONNECTIVES), word, "is", rng.choice(ADJECTIVES)]
    else:
        words = ["a", rng.choice(NOUNS), rng.choice(PREPOSITIONS), word]
    return words + ["."]


def make_document(rng: random.Random, topics: List[List[str]], topic_share: float,
                  min_paragraphs: int, max_paragraphs: int) -> List[str]:
    """Lines of one document: a title naming its topic's words, then paragraphs."""
    topic = rng.choice(topics)
    title = rng.sample(topic, len(topic))
    lines = ["= " + " ".join(title) + " ="]
    for _ in range(rng.randint(min_paragraphs, max_paragraphs)):
        words: List[str] = []
        for _ in range(rng.randint(3, 6)):
            words += topic_sentence(rng, topic) if rng.random() < topic_share else filler_sentence(rng)
        lines.append(" ".join(words))
    return lines


def make_split(rng: random.Random, topics: List[List[str]], num_tokens: int, **doc_args) -> List[str]:
    """Whole documents (separated by a blank line) until about ``num_tokens`` words are written."""
    lines: List[str] = []
    written = 0
    while written < num_tokens:
        for line in make_document(rng, topics, **doc_args):
            lines.append(line)
            written += len(line.split()) + 1  # + end of line, which fairseq counts as a token
        lines.append("")
        written += 1
    return lines


def make_corpus(seed: int = 1, train_tokens: int = 200_000, valid_tokens: int = 20_000,
                test_tokens: int = 20_000, num_topics: int = 8, words_per_topic: int = 4,
                topic_share: float = 0.5, min_paragraphs: int = 6,
                max_paragraphs: int = 12) -> Dict[str, List[str]]:
    """The three splits as lists of lines; the same arguments always give the same text."""
    if num_topics < 2 or words_per_topic < 1:
        raise ValueError("need at least 2 topics of at least 1 word each")
    if not 0.0 < topic_share <= 1.0:
        raise ValueError(f"topic_share must be in (0, 1], got {topic_share}")
    if not 1 <= min_paragraphs <= max_paragraphs:
        raise ValueError("need 1 <= min_paragraphs <= max_paragraphs")
    rng = random.Random(seed)
    topics = make_topics(rng, num_topics, words_per_topic)
    doc_args = dict(topic_share=topic_share, min_paragraphs=min_paragraphs,
                    max_paragraphs=max_paragraphs)
    return {
        split: make_split(rng, topics, n, **doc_args)
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
    parser.add_argument("--num-topics", type=int, default=8, help="topics to draw documents from")
    parser.add_argument("--words-per-topic", type=int, default=4)
    args = parser.parse_args(argv)
    corpus = make_corpus(seed=args.seed, train_tokens=args.train_tokens,
                         valid_tokens=args.valid_tokens, test_tokens=args.test_tokens,
                         num_topics=args.num_topics, words_per_topic=args.words_per_topic)
    write_corpus(args.out_dir, corpus)
    for split, lines in corpus.items():
        print(f"{split}: {len(lines)} lines, {sum(len(l.split()) + 1 for l in lines)} tokens")


if __name__ == "__main__":
    main()
