"""One generation module for the judge's samples and the UI's chat: same prompt, same greedy tokens."""

from mlxsft.config import recipe_from_dict
from mlxsft.generate import eos_ids, hf_tokenizer, sample_completions, stream_text, user_prompt
from mlxsft.model import load_base

from .conftest import QUICKSTART_DATA


def _load(model_dir):
    model, tokenizer, _, _ = load_base(recipe_from_dict({"model": str(model_dir), "data": str(QUICKSTART_DATA)}))
    return model, tokenizer


def test_user_prompt_uses_the_chat_template(tiny_llama):
    _, tokenizer = _load(tiny_llama)
    hf = hf_tokenizer(tokenizer)
    text, ids = user_prompt(tokenizer, "Extract the city: I live in Oslo.")
    assert text == hf.apply_chat_template(
        [{"role": "user", "content": "Extract the city: I live in Oslo."}], tokenize=False, add_generation_prompt=True
    )
    assert "Oslo" in text and text != "Extract the city: I live in Oslo."
    assert ids == hf.encode(text, add_special_tokens=False)
    assert eos_ids(tokenizer)


def test_greedy_stream_and_greedy_sample_agree(tiny_llama):
    model, tokenizer = _load(tiny_llama)
    _, ids = user_prompt(tokenizer, "Extract the city: I live in Oslo.")
    streamed = list(stream_text(model, tokenizer, ids, max_tokens=12))
    assert streamed and streamed[-1].tokens <= 12
    [greedy] = sample_completions(model, tokenizer, ids, k=1, max_tokens=12, temperature=0.0, top_p=1.0, seed=0)
    assert len(greedy.entropies) >= len(greedy.ids) > 0
    text = "".join(d.text for d in streamed)
    assert text.strip() == greedy.text.strip()
