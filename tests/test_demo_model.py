"""The bundled demo model: registered by default, loads with the engine, and answers with text, not noise."""

from __future__ import annotations

from bitnet_actor.config import Settings
from bitnet_actor.engine import load_model
from bitnet_actor.system import DEMO_MODEL_DIR, DEMO_MODEL_NAME, served_models


def test_demo_model_is_registered_by_default() -> None:
    assert served_models(Settings()) == {DEMO_MODEL_NAME: str(DEMO_MODEL_DIR)}
    assert served_models(Settings(no_demo_model=True)) == {}
    total = sum(p.stat().st_size for p in DEMO_MODEL_DIR.iterdir())
    assert total < 8 * 2**20  # a few MB in the repository


def test_demo_model_writes_words() -> None:
    model = load_model(str(DEMO_MODEL_DIR))
    prompt = model.tokenizer.encode("Return a list of")
    text = model.tokenizer.decode(list(model.generate(prompt, max_tokens=30, temperature=0)))
    words = text.split()
    assert len(words) >= 5
    letters = sum(c.isalpha() or c.isspace() or c in ".,'()" for c in text)
    assert letters / len(text) > 0.85, text  # English-like text, not random tokens
    chat = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What does the os module do?"}], add_generation_prompt=True, tokenize=True
    )
    answer = list(model.generate(chat, max_tokens=60, temperature=0))
    assert 0 < len(answer) < 60  # it ends its turn (stops at <|eot_id|>)
