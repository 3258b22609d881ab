#!/usr/bin/env bash
# Download (or take an already-downloaded copy of) WikiText-103 and binarize it for fairseq.
#
#   bash examples/wikitext103/prepare.sh                      # download into data/wikitext-103
#   bash examples/wikitext103/prepare.sh --raw-dir DIR        # use DIR, no network needed
#   options: --dest DIR (default data-bin/wikitext-103), --workers N (default: all cores)
#
# DIR holds the word-level (tokenized) corpus as distributed, wiki.{train,valid,test}.tokens, or
# renamed {train,valid,test}.txt. Output: fairseq-preprocess --only-source binarization with one
# dictionary built from the train split.
# The download URL can be changed with WT103_URL.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

raw="" dest="$ROOT/data-bin/wikitext-103" workers=$(nproc 2>/dev/null || echo 4)
while [ $# -gt 0 ]; do
  case "$1" in
    --raw-dir) raw=$2; shift 2 ;;
    --dest) dest=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "prepare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$raw" ]; then
  raw="$ROOT/data/wikitext-103"
  if [ ! -f "$raw/wiki.train.tokens" ]; then
    url=${WT103_URL:-https://wikitext.smerity.com/wikitext-103-v1.zip}
    mkdir -p "$ROOT/data"
    zip="$ROOT/data/wikitext-103-v1.zip"
    echo "prepare.sh: downloading $url"
    if command -v curl >/dev/null; then curl -fL --retry 3 -o "$zip" "$url"
    else wget -O "$zip" "$url"; fi
    "$PYTHON" -m zipfile -e "$zip" "$ROOT/data/"
  fi
fi

split_file() {  # split_file NAME: the raw file of split NAME, in either naming
  local f
  for f in "$raw/wiki.$1.tokens" "$raw/$1.txt"; do
    if [ -f "$f" ]; then echo "$f"; return; fi
  done
  echo "prepare.sh: no $1 split in $raw (expected wiki.$1.tokens or $1.txt): pass the directory of the extracted WikiText-103" >&2
  exit 1
}
train=$(split_file train); valid=$(split_file valid); test=$(split_file test)

echo "prepare.sh: binarizing $raw -> $dest"
"${BIN}fairseq-preprocess" --only-source \
  --trainpref "$train" --validpref "$valid" --testpref "$test" \
  --destdir "$dest" --workers "$workers"
echo "prepare.sh: done: $dest ($(wc -l < "$dest/dict.txt") dictionary entries + 4 specials)"
