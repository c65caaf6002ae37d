"""A small CLIP byte-level BPE tokenizer built locally (no download), for the ``tiny`` preset.

The vocabulary is the 256-symbol byte alphabet of CLIP (each symbol also with the
end-of-word marker ``</w>``), the merges of the most frequent letter pairs of a small
built-in English corpus (and the merged symbols), and CLIP's two special tokens. Every
string tokenizes (byte fallback), so captions of any language work; ids stay below
``len(tokenizer)``.

transformers 5 pitfall: ``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently builds a
2-token vocabulary; the files must be passed as ``vocab=`` / ``merges=``.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

__all__ = ["build_tiny_clip_tokenizer", "write_tiny_clip_vocab"]

_CORPUS = (
    "a photo of a room with a window and a table the sky above a field of grass under the sun "
    "an indoor scene with white walls wooden floor and a lamp outdoor street with trees and "
    "buildings blue sky clouds mountains in the distance a kitchen a living room with a sofa "
    "a bedroom bright light dark night snow beach sea water road car chair door ceiling "
    "panorama view of the city park lake forest house"
)


def write_tiny_clip_vocab(directory: str | Path, num_merges: int = 200) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` of a tiny CLIP BPE into ``directory``.

    Merges are learned greedily (standard BPE) on a fixed built-in corpus, so the files are
    deterministic. Returns the two paths.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    vocab: list[str] = alphabet + [c + "</w>" for c in alphabet]
    words = Counter(_CORPUS.split())
    splits = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for w, n in words.items():
            s = splits[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        (a, b), _n = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        vocab.append(a + b)
        for w in words:
            s = splits[w]
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = out
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab_path = directory / "vocab.json"
    merges_path = directory / "merges.txt"
    vocab_path.write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def build_tiny_clip_tokenizer(directory: str | Path | None = None, max_length: int = 77) -> CLIPTokenizer:
    """A :class:`CLIPTokenizer` over the tiny local BPE (padding to ``max_length`` with ``<|endoftext|>``).

    ``directory``: where to write the vocabulary files (when None, a temporary folder that is
    removed once the tokenizer has read them).
    """
    if directory is None:  # the tokenizer reads the files when built: a folder that is removed after
        with tempfile.TemporaryDirectory(prefix="opama-tok-") as tmp:
            return build_tiny_clip_tokenizer(tmp, max_length)
    vocab_path, merges_path = write_tiny_clip_vocab(directory)
    return CLIPTokenizer(
        vocab=str(vocab_path),
        merges=str(merges_path),
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )
