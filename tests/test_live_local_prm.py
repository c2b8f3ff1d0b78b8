"""The in-process PRM scorer on a tiny, randomly initialised two-class token classifier.

The Qwen PRM itself cannot be downloaded here, so the test builds a model of the same shape
(two-class logits per token, a ``<extra_0>`` step tag, a ChatML chat template) and checks the
plumbing: one probability per step, aggregation, batching with padding, flags.
"""

from __future__ import annotations


import pytest

from conftest import need_module

torch = need_module("torch", "the local PRM needs torch and transformers")
transformers = need_module("transformers", "the local PRM needs torch and transformers")
tokenizers = need_module("tokenizers", "the local PRM needs torch and transformers")

from optscale.errors import InputError  # noqa: E402
from optscale.live.scorers import LocalPrmScorer, ScoreRequest  # noqa: E402
from conftest import score_with  # noqa: E402

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_prm(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<pad>", "<extra_0>", "<|im_start|>", "<|im_end|>"] + \
        "system user assistant please reason step by and put your final answer within \\boxed{} . 1 2 + = so is " \
        "what the".split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                               additional_special_tokens=["<extra_0>", "<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHATML
    config = transformers.Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                      num_labels=2, pad_token_id=vocab["<pad>"])
    torch.manual_seed(0)
    model = transformers.Qwen2ForTokenClassification(config)
    path = tmp_path_factory.mktemp("tiny-prm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def score(path, items, **kwargs):
    return score_with(lambda: LocalPrmScorer(str(path), device="cpu", batch_size=2, **kwargs), items)


def test_one_probability_per_step_aggregated_and_batched(tiny_prm):
    items = [ScoreRequest("what is 1 + 1", "1 + 1 = 2 .\n\nso the answer is \\boxed{} 2"),
             ScoreRequest("what is 2 + 2", "2 + 2 .\n\n= 2 + 2\n\nso 2 + 2"),
             ScoreRequest("what is 1", "   "),
             ScoreRequest("what is 1", "1")]
    got = score(tiny_prm, items, aggregate="min")
    assert [len(s.steps or ()) for s in got] == [2, 3, 0, 1]
    assert got[2].flag == "empty" and got[2].value == 0.0
    for s in (got[0], got[1], got[3]):
        assert s.flag is None and all(0 < p < 1 for p in s.steps) and s.value == pytest.approx(min(s.steps))
    # scores do not depend on what else is in the batch (padding is masked)
    alone = score(tiny_prm, [items[1]], aggregate="min")[0]
    assert alone.steps == pytest.approx(got[1].steps, abs=1e-5)


def test_a_missing_model_names_the_setting(tmp_path):
    with pytest.raises(InputError, match="cannot load the PRM") as info:
        score(tmp_path / "nothing-here", [])
    assert info.value.where == "scorer.model"
