"""The paper's architecture on a tiny, randomly initialised Qwen2 built here (no hub)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import need_module

torch = need_module("torch", "the predictor extra is not installed")
transformers = need_module("transformers", "the predictor extra is not installed")
need_module("sklearn", "the predictor extra is not installed")

from optscale.predictor import Problems, TrainingSet, TransformerPredictor, load  # noqa: E402

WORDS = ["easy", "simple", "tricky", "hard", "what", "is", "the", "sum", "of", "x", "and", "y", "find", "area"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A 2-layer Qwen2 with a byte-level BPE tokenizer trained on a few words, saved as a local folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("tiny-qwen2")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 10, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    config = transformers.Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.Qwen2Model(config).save_pretrained(folder)
    return str(folder)


def _data(n: int = 48) -> TrainingSet:
    rng = np.random.default_rng(0)
    level = rng.integers(0, 4, n)
    questions = [f"{WORDS[k]} what is the sum of x and y" + " and x" * int(rng.integers(0, 6)) for k in level]
    problems = Problems([f"p{i}" for i in range(n)], questions, [None] * n, [None] * n)
    return TrainingSet(problems, 0.97 - 0.05 * level, 0.02 + 0.02 * level)


def test_trains_saves_and_loads(backbone, tmp_path):
    data = _data()
    model = TransformerPredictor(backbone=backbone, trainable_layers=1, epochs=10, batch_size=16, max_length=32,
                                 head_hidden=16, dropout=0.0, learning_rate=3e-3, head_learning_rate=1e-2, device="cpu")
    model.fit(data, folds=4)
    # One held-out fold (repeated questions stay together, so its size varies).
    assert model.metrics["validation"]["rounds"] == 1 and 0 < model.metrics["validation"]["rows"] < len(data)
    trainable = {n.split(".")[1] if n.startswith("backbone.") else n.split(".")[0]
                 for n, p in model.net.named_parameters() if p.requires_grad}
    assert trainable == {"layers", "norm", "pool", "mean_head", "sigma_head"}
    assert not any(p.requires_grad for p in model.net.backbone.layers[0].parameters())
    pred = model.predict(data.problems)
    assert np.all((pred.mean > 0) & (pred.mean < 1) & (pred.std > 0))
    # It learns the easy/hard signal the words carry.
    assert np.corrcoef(pred.mean, data.mean)[0, 1] > 0.8
    again = load(model.save(tmp_path / "m"))
    np.testing.assert_allclose(again.predict(data.problems).mean, pred.mean, atol=1e-5)


def test_attention_pooling_ignores_padding(backbone):
    model = TransformerPredictor(backbone=backbone, trainable_layers=2, epochs=1, device="cpu")
    data = _data(8)
    model._build()
    short = Problems(["a"], ["easy what is x"], [None], [None])
    both = Problems(["a", "b"], ["easy what is x", "hard " + "the sum of x and y " * 5], [None] * 2, [None] * 2)
    np.testing.assert_allclose(model._predict(short)[0], model._predict(both)[0], atol=1e-5)
    with pytest.raises(Exception, match="trainable_layers"):
        TransformerPredictor(backbone=backbone, trainable_layers=3).fit(data, folds=2)
