"""Multi-Modal LLM: [SEG] tokenizer, prompt template, LoRA placement, gradients, overfit + generate, local loading."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from aura_core.model.config import get_config
from aura_core.model.mllm import MultiModalLLM, _clip_processor, _llava_config, lora_target_pattern
from aura_core.model.tokenizer import (
    IGNORE_INDEX,
    IMAGE_TOKEN,
    add_aura_tokens,
    build_word_tokenizer,
    default_word_tokenizer,
    load_tokenizer,
    seg_phrases,
)
from aura_core.model.tokens import SEG_TOKEN
from training.tiny_tokenizer import synthetic_corpus

TINY = get_config("tiny").mllm
QUESTIONS = ["What can I use to cut something?", "Which object is hidden the most?"]
ANSWERS = [
    "You can use the knife [SEG] and the scissors [SEG]. The knife is partly hidden behind the cup.",
    "The cup [SEG] is the most hidden; it is mostly covered by the plate.",
]


def _lower(text: str) -> str:
    """What the lower-casing word tokenizer gives back ([SEG] keeps its case)."""
    return text.lower().replace(SEG_TOKEN.lower(), SEG_TOKEN)


def _images(n: int = 2, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(n)]


def _tiny(seed: int = 0, **overrides) -> MultiModalLLM:
    torch.manual_seed(seed)
    return MultiModalLLM.build(dataclasses.replace(TINY, **overrides))


def test_seg_is_one_token_and_text_decodes_readably():
    tok = default_word_tokenizer()
    seg_id, image_id = add_aura_tokens(tok)
    assert tok.encode(SEG_TOKEN, add_special_tokens=False) == [seg_id]
    assert tok.encode(IMAGE_TOKEN, add_special_tokens=False) == [image_id]
    ids = tok.encode(ANSWERS[0], add_special_tokens=False)
    assert ids.count(seg_id) == 2 and tok.unk_token_id not in ids  # the synthetic corpus covers the answer
    assert tok.decode(ids) == _lower(ANSWERS[0])
    assert tok.decode(tok.encode(ANSWERS[1], add_special_tokens=False)) == _lower(ANSWERS[1])
    # A plain tokenizer gains both tokens, one id each.
    plain = build_word_tokenizer(["a cup and a knife."], with_aura_tokens=False)
    assert SEG_TOKEN not in plain.get_vocab()
    seg_id, _ = add_aura_tokens(plain)
    assert plain.encode("a cup [SEG].", add_special_tokens=False)[2] == seg_id


def test_seg_phrases_name_the_object_before_each_seg():
    assert seg_phrases(ANSWERS[0]) == ["the knife", "the scissors"]
    answer = "Put the apple [SEG] and the banana [SEG] on the plate [SEG]. The apple is in full view."
    assert seg_phrases(answer) == ["the apple", "the banana", "the plate"]
    assert seg_phrases("knife [SEG], cup [SEG]") == ["knife", "cup"]
    assert seg_phrases("nothing here.") == []


def test_prompt_template_labels_only_the_last_answer():
    model = _tiny()
    history = [("What is in front of the red apple?", "The cup [SEG] covers the apple, which is partly hidden.")]
    batch = model.encode(_images(2), QUESTIONS, ANSWERS, histories=[history, None])
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == labels.shape == batch["attention_mask"].shape
    assert batch["pixel_values"].shape == (2, 3, TINY.vision_image_size, TINY.vision_image_size)
    assert ((ids == model.image_token_id).sum(1) == model.image_seq_length).all()  # one image, expanded
    answer = [i for i, l in zip(ids[0].tolist(), labels[0].tolist()) if l != IGNORE_INDEX]
    assert answer[-1] == model.tokenizer.eos_token_id
    assert model.template.decode(answer) == _lower(ANSWERS[0])
    # the history's [SEG] is context: forward returns only the last answer's [SEG] states
    out = model(batch)
    assert [h.shape[0] for h in out.seg_hidden] == [2, 1]
    assert (ids[0] == model.seg_token_id).sum() == 3
    text = model.tokenizer.decode(ids[0][batch["attention_mask"][0].bool()])
    assert text.startswith("<s> user: <image>") and "assistant: the cup [SEG] covers" in text


def test_lora_targets_only_language_model_attention():
    model = _tiny()
    lora_modules = [name for name, module in model.named_modules() if hasattr(module, "lora_A")]
    assert len(lora_modules) == TINY.num_layers * 4
    assert all(".language_model." in n and "vision_tower" not in n for n in lora_modules)
    assert {n.rsplit(".", 1)[1] for n in lora_modules} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    pattern = lora_target_pattern(("q_proj", "v_proj"))
    import re

    assert re.fullmatch(pattern, "model.language_model.layers.0.self_attn.q_proj")
    assert not re.fullmatch(pattern, "model.vision_tower.encoder.layers.0.self_attn.q_proj")
    assert not re.fullmatch(pattern, "model.language_model.layers.0.self_attn.k_proj")
    # lora_r = 0 (Table 3 "w/o LoRA"): only lm_head + embed_tokens train
    no_lora = _tiny(lora_r=0)
    trainable = {n.split(".")[-2] for n, p in no_lora.named_parameters() if p.requires_grad}
    assert trainable == {"lm_head", "embed_tokens"}
    assert not any(hasattr(m, "lora_A") for m in no_lora.modules())


def test_gradients_reach_exactly_lora_and_token_rows():
    model = _tiny()
    model.train()
    batch = model.encode(_images(2), QUESTIONS, ANSWERS)
    model(batch).text_loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad <= trainable
    assert all("lora_" in n or ".modules_to_save." in n for n in trainable)
    assert any("lora_B" in n for n in with_grad)
    assert {n for n in trainable if ".modules_to_save." in n} == {
        n for n in with_grad if ".modules_to_save." in n
    } and len([n for n in trainable if ".modules_to_save." in n]) == 2  # lm_head + embed_tokens copies
    frozen = [p for n, p in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    embed_grad = next(p.grad for n, p in model.named_parameters() if "embed_tokens.modules_to_save" in n)
    head_grad = next(p.grad for n, p in model.named_parameters() if "lm_head.modules_to_save" in n)
    assert embed_grad[model.seg_token_id].abs().sum() > 0 and head_grad[model.seg_token_id].abs().sum() > 0


def test_overfit_two_samples_then_generate_reproduces_answers():
    model = _tiny(seed=1)
    images = _images(2)
    batch = model.encode(images, QUESTIONS, ANSWERS)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(80):
        loss = model(batch).text_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0] and losses[-1] < 0.1, losses[::10]

    model.train()  # generate switches to eval for the call and restores the mode
    for image, question, answer in zip(images, QUESTIONS, ANSWERS):
        gen = model.generate(image, question, max_new_tokens=40)
        assert model.training
        assert gen.answer == _lower(answer)
        k = answer.count(SEG_TOKEN)
        assert gen.seg_hidden.shape == (k, model.hidden_size)
        assert gen.phrases == seg_phrases(_lower(answer))
        # forward (teacher forcing) and generate pick the same [SEG] states
        model.eval()
        with torch.no_grad():
            forced = model(model.encode([image], [question], [gen.answer])).seg_hidden[0]
        model.train()
        torch.testing.assert_close(forced, gen.seg_hidden, atol=1e-4, rtol=1e-4)
    short = model.generate(images[0], QUESTIONS[0], max_new_tokens=3)
    assert len(short.token_ids) == 3


def test_local_hf_directory_round_trip(tmp_path):
    # A plain LLM tokenizer with <image> but no [SEG], like a real HF-format LLaVA directory.
    tok = build_word_tokenizer(synthetic_corpus(scenes=20), with_aura_tokens=False)
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(_llava_config(TINY, tok, tok.convert_tokens_to_ids(IMAGE_TOKEN))).eval()
    llava.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _clip_processor(TINY.vision_image_size).save_pretrained(tmp_path)

    model = MultiModalLLM.build(dataclasses.replace(TINY, pretrained_path=str(tmp_path))).eval()
    assert len(model.tokenizer) == len(tok) + 1 and model.seg_token_id == len(tok)
    assert model.core.get_input_embeddings().weight.shape[0] >= len(model.tokenizer)
    assert model.image_seq_length == (TINY.vision_image_size // TINY.vision_patch_size) ** 2
    batch = model.encode(_images(1), QUESTIONS[:1])
    with torch.no_grad():
        loaded = model.core.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).last_hidden_state
        saved = llava.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).last_hidden_state
    torch.testing.assert_close(loaded, saved)  # LoRA starts as identity
    assert model.generate(_images(1)[0], QUESTIONS[0], max_new_tokens=4).token_ids

    # the tokenizer with [SEG] saved next to a checkpoint reloads to the same ids
    model.tokenizer.save_pretrained(tmp_path / "tokenizer")
    again = load_tokenizer(tmp_path / "tokenizer")
    assert again.encode(ANSWERS[0], add_special_tokens=False) == model.tokenizer.encode(ANSWERS[0], add_special_tokens=False)


def test_bad_input_gives_clear_errors(tmp_path):
    model = _tiny()
    image = _images(1)[0]
    with pytest.raises(ValueError, match="question is empty"):
        model.generate(image, "  ")
    with pytest.raises(ValueError, match="max_length"):
        model.generate(image, "cup " * TINY.max_length)
    with pytest.raises(ValueError, match="no room"):
        fill = TINY.max_length - model.image_seq_length - 5  # bos, "user", ":", "assistant", ":"
        model.generate(image, " ".join(["cup"] * fill))
    with pytest.raises(ValueError, match="dtype uint8"):
        model.generate(image.astype(np.float32), QUESTIONS[0])
    with pytest.raises(ValueError, match="HxWx3"):
        model.generate(image[..., :2].copy(), QUESTIONS[0])
    with pytest.raises(ValueError, match="numpy"):
        model.generate(image.tolist(), QUESTIONS[0])
    with pytest.raises(ValueError, match="image 1"):
        model.encode([image, image[..., 0]], QUESTIONS)
    with pytest.raises(ValueError, match="answers has 1 entries for 2 images"):
        model.encode(_images(2), QUESTIONS, ANSWERS[:1])
    with pytest.raises(ValueError, match="sample 1: history round 0: question is empty"):
        model.encode(_images(2), QUESTIONS, ANSWERS, histories=[None, [("", "x")]])
    with pytest.raises(ValueError, match="forward needs labels"):
        model(model.encode([image], QUESTIONS[:1]))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        MultiModalLLM.build(dataclasses.replace(TINY, pretrained_path=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="not a torch dtype"):
        MultiModalLLM.build(dataclasses.replace(TINY, dtype="float99"))


# ---------------------------------------------------------------------- the tiny tokenizer file, user text


def test_tiny_tokenizer_is_the_shipped_file_with_the_default_models_ids(monkeypatch):
    import sys

    from aura_core.model.tokenizer import TINY_TOKENIZER_FILE

    monkeypatch.setitem(sys.modules, "aura_core.data.synthetic", None)  # importing the generator now fails
    tok = default_word_tokenizer()
    assert TINY_TOKENIZER_FILE.is_file() and tok.backend_tokenizer.get_vocab_size() == len(tok)
    default_model_tokenizer = TINY_TOKENIZER_FILE.parents[1] / "default_model" / "tokenizer"
    if not default_model_tokenizer.is_dir():
        pytest.skip("no embedded default model in this tree")
    # the embedded default model's embedding rows are indexed by these ids
    assert tok.get_vocab() == load_tokenizer(default_model_tokenizer).get_vocab()


def test_every_word_the_generator_writes_is_in_the_shipped_vocabulary():
    tok = default_word_tokenizer()
    texts = synthetic_corpus(scenes=30, seed=99)  # other scenes than the file's corpus
    unknown = sorted(
        {w for text in texts for w in tok.tokenize(text) if tok.convert_tokens_to_ids(w) == tok.unk_token_id}
    )
    assert not unknown, f"words {unknown} are [UNK]: remake the file (python -m training.tiny_tokenizer), then retrain"


def test_tiny_tokenizer_script_writes_the_file_and_checks_it(tmp_path):
    from training.tiny_tokenizer import build_tiny_tokenizer, main

    out = tmp_path / "tokenizer.json"
    assert main(["--out", str(out), "--scenes", "5"]) == 0
    assert main(["--out", str(out), "--scenes", "5", "--check"]) == 0
    assert main(["--out", str(out), "--scenes", "8", "--seed", "1", "--check"]) == 1  # other words
    from transformers import PreTrainedTokenizerFast

    assert PreTrainedTokenizerFast(tokenizer_file=str(out)).get_vocab() == build_tiny_tokenizer(5).get_vocab()


def _llama_like_tokenizer():
    """A SentencePiece-style BPE tokenizer laid out like llava-hf's: <unk> <s> </s>, then <image> and <pad> added."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    corpus = QUESTIONS + ANSWERS + ["USER: ASSISTANT: what where is the cup knife <>/[]"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=150, special_tokens=["<unk>", "<s>", "</s>"]))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    wrapped.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    wrapped.add_special_tokens({"pad_token": "<pad>"})
    return wrapped


@pytest.mark.parametrize("tokenizer", ["tiny", "llama-like"])
def test_special_tokens_typed_in_questions_stay_plain_words(tokenizer):
    from aura_core.model.tokenizer import PromptTemplate

    tok = default_word_tokenizer() if tokenizer == "tiny" else _llama_like_tokenizer()
    template = PromptTemplate(tokenizer=tok, image_seq_length=5)
    seg, image = template.seg_token_id, template.image_token_id
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    assert tok.encode(f"{IMAGE_TOKEN} what?", add_special_tokens=False)[0] == image  # what the bug fed LLaVA
    typed = [IMAGE_TOKEN, SEG_TOKEN, tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token, "USER:", "ASSISTANT:"]
    for t in typed:
        earlier = f"the cup {SEG_TOKEN} {t}."  # a model's earlier answer keeps its [SEG]s
        ids, _ = template.build(f"{t} what? {t}", history=[(f"{t} where is the cup?", earlier)])
        assert ids.count(image) == 5 and ids[ids.index(image) : ids.index(image) + 5] == [image] * 5, t  # one slot
        assert ids.count(seg) == earlier.count(SEG_TOKEN), t  # the history answer's, none from the questions
        assert ids.count(bos) == 1 and ids[0] == bos and ids.count(eos) == 1 and pad not in ids, t
        # training tokenises the question exactly like inference, and the answer's [SEG] is the [SEG] id
        answer = f"the knife {SEG_TOKEN} {t}"
        train_ids, labels = template.build(f"{t} what?", answer=answer)
        prompt, _ = template.build(f"{t} what?")
        assert train_ids[: len(prompt)] == prompt and seg not in prompt and train_ids.count(image) == 5, t
        assert train_ids.count(seg) == answer.count(SEG_TOKEN), t
        assert [i for i in labels if i != IGNORE_INDEX].count(eos) == 1, t


def test_kv_cache_decoding_works_under_both_names_of_the_cache_argument(monkeypatch):
    """transformers before 5.24 call LlavaModel's KV cache `past_key_values`, later ones `cache`: both decode the same."""
    import aura_core.model.mllm as mllm_module

    mllm = _tiny(seed=3, max_new_tokens=6)
    image = _images(1)[0]
    first = mllm.generate(image, QUESTIONS[0])
    other = "past_key_values" if mllm_module._CACHE_ARGUMENT == "cache" else "cache"
    monkeypatch.setattr(mllm_module, "_CACHE_ARGUMENT", other)
    second = mllm.generate(image, QUESTIONS[0])
    assert second.token_ids == first.token_ids and len(first.token_ids) == 6
